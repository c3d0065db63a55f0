"""Commit signatures in-process: every verdict agrees with real git and ssh-keygen, byte for byte."""

from __future__ import annotations

import base64
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from cathrepo.exceptions import NotFoundError, VerificationError
from cathrepo.provenance.allowed_signers import parse_allowed_signers, read_allowed_signers
from cathrepo.provenance.commit_signatures import (
    parse_sshsig,
    sign_commit_payload,
    signed_commit,
    split_signed_commit,
    verify_commit_signature,
)
from cathrepo.provenance.keys import SigningKey, ensure_key
from cathrepo.repo.git import Git

BEGIN, END = "-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----"


@pytest.fixture
def alice(signing_key) -> SigningKey:
    return signing_key


@pytest.fixture
def repo(signed_git) -> Git:
    """A repository whose commits git signs with alice's key."""
    return signed_git


def _git(root: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True)


def _git_verdict(root: Path, sha: str, allowed: Path) -> tuple[str, bool]:
    """(the %G? letter, whether ``git verify-commit`` accepts) from real git trusting ``allowed``.

    git feeds the payload to ``ssh-keygen -Y check-novalidate`` without ignoring SIGPIPE, so when
    ssh-keygen quits early (an unreadable signature) git sometimes dies of it and says nothing; such a
    run is repeated.
    """
    config = ["-c", f"gpg.ssh.allowedSignersFile={allowed}"]
    for attempt in range(50):  # the race is lost more often on a loaded machine: up to 50 tries
        log = _git(root, *config, "log", "-1", "--format=%G?", sha)
        if log.returncode != -signal.SIGPIPE:
            break
        time.sleep(0.01 * attempt)
    assert log.returncode == 0, log.stderr
    return log.stdout.decode().strip(), _git(root, *config, "verify-commit", sha).returncode == 0


def _store(root: Path, raw: bytes) -> str:
    """Write ``raw`` as a commit object and point ``main`` at it."""
    done = _git(root, "hash-object", "-t", "commit", "-w", "--stdin", stdin=raw)
    assert done.returncode == 0, done.stderr
    sha = done.stdout.decode().strip()
    assert _git(root, "update-ref", "refs/heads/main", sha).returncode == 0
    return sha


def _payload(root: Path, message: str = "Made in-process\n\nCathrepo-Edit: abc\n") -> bytes:
    """An unsigned commit on top of HEAD, dated 2023-11-14."""
    tree, parent = (_git(root, "rev-parse", rev).stdout.decode().strip() for rev in ("HEAD^{tree}", "HEAD"))
    who = "Alice <alice@example.com> 1700000000 +0100"
    return f"tree {tree}\nparent {parent}\nauthor {who}\ncommitter {who}\n\n{message}".encode()


def _ssh_keygen_sign(key: SigningKey, payload: bytes, tmp_path: Path, namespace: str = "git") -> str:
    (tmp_path / "payload").write_bytes(payload)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-n", namespace, "-f", str(key.private_path),
                    str(tmp_path / "payload")], check=True, capture_output=True)
    return (tmp_path / "payload.sig").read_text()


def test_commit_signed_by_git_verifies_and_its_payload_is_what_ssh_keygen_checks(repo, alice, tmp_path):
    (repo.root / "a.txt").write_text("1")
    repo.add(["a.txt"])
    sha = repo.commit("First edit\n\nWhy it was made.", {"Cathrepo-Edit": "abc"})
    raw = repo.read_objects([sha])[sha]
    payload, armored = split_signed_commit(raw)
    assert armored is not None and b"gpgsig" not in payload and payload.endswith(b"Cathrepo-Edit: abc\n")
    check = verify_commit_signature(raw, read_allowed_signers(repo.root / "allowed_signers"))
    assert (check.ok, check.code, check.principal) == (True, "G", "alice@example.com")
    assert check.fingerprint == alice.fingerprint and "Good" in check.detail
    assert _git_verdict(repo.root, sha, repo.root / "allowed_signers") == ("G", True)
    sig = parse_sshsig(armored)
    assert (sig.namespace, sig.hash_algorithm, sig.public_key) == ("git", "sha512", alice.public_key_bare)
    assert signed_commit(payload, armored) == raw  # the header goes back exactly where git put it
    (tmp_path / "sig").write_text(armored)
    verify = ["ssh-keygen", "-Y", "verify", "-f", str(repo.root / "allowed_signers"), "-I", alice.principal,
              "-n", "git", "-s", str(tmp_path / "sig")]
    good = subprocess.run(verify, input=payload, capture_output=True)
    assert good.returncode == 0 and good.stdout.startswith(b"Good"), good.stderr
    assert subprocess.run(verify, input=payload + b"\n", capture_output=True).returncode != 0


def test_sign_commit_payload_is_byte_for_byte_what_ssh_keygen_signs(repo, alice, tmp_path):
    payload = _payload(repo.root)
    assert sign_commit_payload(alice, payload) == _ssh_keygen_sign(alice, payload, tmp_path)


def test_commit_signed_in_process_is_accepted_by_git_verify_commit(repo, alice):
    payload = _payload(repo.root)
    raw = signed_commit(payload, sign_commit_payload(alice, payload))
    sha = _store(repo.root, raw)
    assert _git(repo.root, "cat-file", "commit", "main").stdout == raw
    assert _git(repo.root, "verify-commit", "main").returncode == 0
    signer = _git(repo.root, "log", "-1", "--format=%G? %GS", "main").stdout.decode().strip()
    assert signer == "G alice@example.com"
    assert verify_commit_signature(raw, read_allowed_signers(repo.root / "allowed_signers")).ok
    assert sha == _git(repo.root, "rev-parse", "main").stdout.decode().strip()


def _line(key: SigningKey, options: str = "") -> str:
    return f"{key.principal} {options + ' ' if options else ''}{key.public_key_bare}\n"


# case: (build (raw, allowed_signers text) from payload, alice, tmp_path; %G? letter; words in the detail)
CASES = {
    "good": (lambda p, a, t: (signed_commit(p, sign_commit_payload(a, p)), _line(a)), "G", "Good"),
    "tampered after signing": (
        lambda p, a, t: (signed_commit(p, sign_commit_payload(a, p)).replace(b"in-process", b"elsewhere"),
                         _line(a)), "B", "changed after it was signed"),
    "key not in allowed_signers": (
        lambda p, a, t: (signed_commit(p, sign_commit_payload(ensure_key("mallory@x.org", name="m"), p)),
                         _line(a)), "U", "not in allowed_signers"),
    "namespaces exclude git": (
        lambda p, a, t: (signed_commit(p, sign_commit_payload(a, p)), _line(a, 'namespaces="file"')),
        "B", 'namespace "git"'),
    "first line listing the key excludes git": (  # ssh-keygen only tries that line's principals
        lambda p, a, t: (signed_commit(p, sign_commit_payload(a, p)),
                         _line(a, 'namespaces="file"') + f"bob@example.com {a.public_key_bare}\n"),
        "B", 'namespace "git"'),
    "namespaces denies git with !": (
        lambda p, a, t: (signed_commit(p, sign_commit_payload(a, p)), _line(a, 'namespaces="!git,*"')),
        "B", 'namespace "git"'),
    "key expired before the commit": (
        lambda p, a, t: (signed_commit(p, sign_commit_payload(a, p)), _line(a, 'valid-before="20200101"')),
        "U", "not valid at the commit's time"),
    "key expired after the commit": (
        lambda p, a, t: (signed_commit(p, sign_commit_payload(a, p)), _line(a, 'valid-before="20240101"')),
        "G", "Good"),
    "key valid only after the commit": (
        lambda p, a, t: (signed_commit(p, sign_commit_payload(a, p)), _line(a, 'valid-after="20300101Z"')),
        "U", "not valid at the commit's time"),
    "unknown option on the line": (
        lambda p, a, t: (signed_commit(p, sign_commit_payload(a, p)), _line(a, 'no-such-option="x"')),
        "U", "not in allowed_signers"),
    "signed for another namespace": (
        lambda p, a, t: (signed_commit(p, _ssh_keygen_sign(a, p, t, "file")), _line(a)), "B",
        'namespace "file"'),
    "unsigned": (lambda p, a, t: (p, _line(a)), "N", "no signature"),
    "broken SSH armor": (lambda p, a, t: (signed_commit(p, f"{BEGIN}\nZm9vYmFy\n{END}\n"), _line(a)), "B",
                         "malformed"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_verdict_agrees_with_git(case, repo, alice, tmp_path):
    build, letter, words = CASES[case]
    raw, allowed_text = build(_payload(repo.root), alice, tmp_path)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_text)
    check = verify_commit_signature(raw, parse_allowed_signers(allowed_text))
    assert (check.code, check.ok) == _git_verdict(repo.root, _store(repo.root, raw), allowed)
    assert (check.code, check.ok, check.needs_git) == (letter, letter == "G", False)
    assert words in check.detail


def test_garbage_and_pgp_signatures_are_verdicts_not_exceptions(repo, alice):
    payload = _payload(repo.root)
    garbage = signed_commit(payload, "not a signature\nat all\n")
    check = verify_commit_signature(garbage, [])
    assert (check.ok, check.code, check.needs_git) == (False, "E", False) and "malformed" in check.detail
    git = _git(repo.root, "verify-commit", _store(repo.root, garbage))  # git gives up on it
    assert git.returncode != 0 and b"bad/incompatible signature" in git.stderr
    pgp = signed_commit(payload, "-----BEGIN PGP SIGNATURE-----\n\nwsBc\n-----END PGP SIGNATURE-----\n")
    check = verify_commit_signature(pgp, read_allowed_signers(repo.root / "allowed_signers"))
    assert (check.ok, check.needs_git) == (False, True) and "git" in check.detail


def test_other_hash_signature_header_is_left_out_of_the_payload(repo, alice):
    payload = _payload(repo.root)
    raw = signed_commit(payload, sign_commit_payload(alice, payload))
    cut = raw.index(b"\n\n") + 1
    other = b"gpgsig-sha256 -----BEGIN SSH SIGNATURE-----\n junk\n -----END SSH SIGNATURE-----\n"
    both = raw[:cut] + other + raw[cut:]
    assert split_signed_commit(both)[0] == payload
    assert _git_verdict(repo.root, _store(repo.root, both), repo.root / "allowed_signers") == ("G", True)
    assert verify_commit_signature(both, read_allowed_signers(repo.root / "allowed_signers")).ok
    sha256_payload, sha256_sig = split_signed_commit(both, object_format="sha256")
    assert b"gpgsig" not in sha256_payload and sha256_sig is not None and "junk" in sha256_sig


def _armor(wire: bytes) -> str:
    return f"{BEGIN}\n{base64.b64encode(wire).decode()}\n{END}\n"


def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _wire(*, magic=b"SSHSIG", version=1, key_type=b"ssh-ed25519", hash_name=b"sha512", tail=b"") -> bytes:
    key = _s(key_type) + _s(b"k" * 32)
    return (magic + struct.pack(">I", version) + _s(key) + _s(b"git") + _s(b"") + _s(hash_name)
            + _s(_s(key_type) + _s(b"s" * 64)) + tail)


@pytest.mark.parametrize(("armored", "words"), [
    ("-----BEGIN PGP SIGNATURE-----\nZm9v\n-----END PGP SIGNATURE-----\n", "armor"),
    (f"{BEGIN}\n%%%%\n{END}\n", "base64"),
    (_armor(_wire(magic=b"SSHSIX")), "SSHSIG magic"),
    (_armor(_wire(version=2)), "version 2"),
    (_armor(_wire(key_type=b"ssh-rsa")), "ssh-rsa key"),
    (_armor(_wire(hash_name=b"md5")), "hash algorithm 'md5'"),
    (_armor(_wire(tail=b"x")), "trailing data"),
    (_armor(_wire()[:40]), "ends early"),
])
def test_parse_sshsig_refuses_malformed_signatures(armored, words):
    assert parse_sshsig(_armor(_wire())).hash_algorithm == "sha512"
    with pytest.raises(VerificationError, match="malformed") as error:
        parse_sshsig(armored)
    assert words in error.value.message


def test_read_objects_is_git_cat_file_for_many_commits(repo):
    for name in ("a", "b", "c"):
        (repo.root / name).write_text(name)
        repo.add([name])
        repo.commit(f"Add {name}")
    shas = _git(repo.root, "rev-list", "HEAD").stdout.decode().split()
    assert len(shas) == 4
    commits = repo.read_objects(shas)
    assert list(commits) == shas
    assert all(commits[sha] == _git(repo.root, "cat-file", "commit", sha).stdout for sha in shas)
    with pytest.raises(NotFoundError, match="no object"):
        repo.read_objects([shas[0], "0" * 40])
