"""cathrepo keys list, add and revoke on the command line: the lines they print, --json, refusals."""

from __future__ import annotations

import json

from cathrepo.provenance.keys import ensure_key
from tests.cli.runner import cathrepo


def test_keys_list_add_revoke(repo_dir):
    bob = ensure_key("bob@example.com", name="id_bob")
    pub = bob.private_path.with_name(bob.private_path.name + ".pub")
    out = cathrepo("keys", "add", "bob@example.com", str(pub), cwd=repo_dir).stdout
    assert f"added {bob.fingerprint} for bob@example.com" in out
    again = cathrepo("keys", "add", "bob@example.com", bob.public_key, cwd=repo_dir, ok=False)
    assert again.returncode == 2 and "already" in again.stderr

    listed = cathrepo("keys", "list", cwd=repo_dir).stdout
    assert f"{bob.fingerprint}  bob@example.com" in listed and "valid" in listed
    out = cathrepo("keys", "revoke", "bob@example.com", "--at", "20250101000000Z", "-m", "left", cwd=repo_dir).stdout
    assert f"revoked {bob.fingerprint} (bob@example.com) as of 20250101000000Z" in out
    (entry,) = [k for k in json.loads(cathrepo("keys", "list", "--json", cwd=repo_dir).stdout)
                if k["fingerprint"] == bob.fingerprint]
    assert entry["revoked"] == "20250101000000Z"
    assert 'valid-before="20250101000000Z"' in (repo_dir / "allowed_signers").read_text()
    for args, words in [(("keys", "revoke", "bob@example.com"), "not revoked already"),
                        (("keys", "add", "bob@example.com", str(pub)), "not added again"),
                        (("keys", "revoke", "nobody@example.com"), "No key"),
                        (("keys", "revoke", bob.fingerprint, "--at", "29990101Z"), "past time")]:
        run = cathrepo(*args, cwd=repo_dir, ok=False)
        assert run.returncode in (2, 5) and words in run.stderr, (args, run.stderr)
    assert cathrepo("verify", cwd=repo_dir).returncode == 0  # each change was a signed commit
