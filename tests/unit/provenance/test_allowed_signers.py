"""allowed_signers: git's format read and written faithfully; adding is idempotent."""

from __future__ import annotations

import pytest

from cathrepo.exceptions import ConfigError
from cathrepo.provenance.allowed_signers import (
    add_signer,
    find_signer,
    parse_allowed_signers,
    read_allowed_signers,
)
from cathrepo.provenance.keys import ensure_key

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIISayyMfR/+/6bN9/XTzMw/nwhdEimXoGySAolllXT97"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"

SAMPLE = f"""# who may sign edits
alice@example.com {KEY_A} laptop key
bob@example.com,*@ops.example.com namespaces="git,cathrepo-edit" {KEY_B}

"carol@example.com" cert-authority {KEY_A}
"""


def test_parse_sample():
    signers = parse_allowed_signers(SAMPLE)
    assert [s.principals for s in signers] == [("alice@example.com",),
                                               ("bob@example.com", "*@ops.example.com"),
                                               ("carol@example.com",)]
    alice, bob, carol = signers
    assert alice.comment == "laptop key" and alice.public_key == KEY_A and alice.namespaces is None
    assert bob.namespaces == ("git", "cathrepo-edit")
    assert bob.allows_principal("dave@ops.example.com") and not bob.allows_principal("eve@example.com")
    assert bob.allows_namespace("git") and not bob.allows_namespace("file")
    assert carol.cert_authority
    for signer in signers:
        assert parse_allowed_signers(signer.to_line()) == [signer]


def test_find_signer_skips_cert_authorities_and_checks_principal():
    signers = parse_allowed_signers(SAMPLE)
    assert find_signer(signers, KEY_A).principal == "alice@example.com"
    assert find_signer(signers, KEY_A, principal="carol@example.com") is None
    assert find_signer(signers, KEY_B + " some comment", principal="x@ops.example.com") == signers[1]  # bob's line
    assert find_signer(signers, KEY_B, principal="x@example.com") is None


def test_negated_principal_denies():
    (signer,) = parse_allowed_signers(f"*@example.com,!mallory@example.com {KEY_A}")
    assert signer.allows_principal("alice@example.com")
    assert not signer.allows_principal("mallory@example.com")


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "allowed_signers"
    path.write_text(f"alice@example.com {KEY_A}\nbob@example.com ssh-ed25519\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_allowed_signers(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_allowed_signers(tmp_path / "missing")


def test_add_signer_is_idempotent_and_keeps_existing_lines(tmp_path):
    path = tmp_path / "allowed_signers"
    path.write_text("# team\n" + f"bob@example.com {KEY_B}")  # no trailing newline
    key = ensure_key("alice@example.com")
    assert add_signer(path, key.principal, key.public_key) is True
    assert add_signer(path, key.principal, key.public_key) is False
    text = path.read_text()
    assert text.startswith("# team\nbob@example.com") and text.endswith("\n")
    assert text.count("alice@example.com") == 1
    signers = read_allowed_signers(path)
    assert find_signer(signers, key.public_key, principal="alice@example.com") == signers[1]  # the added line
    assert add_signer(path, "alice@work.example.com", key.public_key) is True
    assert len(read_allowed_signers(path)) == 3
