"""Approvals and revocation, without a repository: an approval verifies over its record only, in its own
namespace, by a listed key valid when it was made and not the author's; revoking keeps the line, and
ssh-keygen judges the revoked line at a time as cathrepo does."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time

import pytest

from cathrepo.exceptions import SigningError, VerificationError
from cathrepo.provenance.allowed_signers import (
    absolute_time,
    add_signer,
    find_signer,
    read_allowed_signers,
    revoke_signer,
    ssh_time,
)
from cathrepo.provenance.approvals import (
    Author,
    approval_name,
    approvers,
    check_approval,
    sign_approval,
)
from cathrepo.provenance.keys import ensure_key
from cathrepo.provenance.signing import sign_payload

RECORD = b'{"fact": {"subject": "Aspirin", "target_new": "100 mg"}, "risk": "high"}\n'
OTHER = b'{"fact": {"subject": "Aspirin", "target_new": "900 mg"}, "risk": "high"}\n'
NOW = int(time.time())


@pytest.fixture
def keys(tmp_path):
    """alice (the author), bob and carol (approvers), all listed; dave is not."""
    out = {name: ensure_key(f"{name}@example.com", name=f"id_{name}") for name in ("alice", "bob", "carol", "dave")}
    for name in ("alice", "bob", "carol"):
        add_signer(tmp_path / "allowed_signers", out[name].principal, out[name].public_key)
    return out


@pytest.fixture
def author(keys):
    envelope = sign_payload(keys["alice"], RECORD)
    return Author.of(envelope, "Alice A.")


def _path(key) -> str:
    return f"edits/0123456789abcdef/approvals/{approval_name(key.fingerprint)}"


def _check(tmp_path, key, author, *, envelope=None, record=RECORD, at=NOW, signers_then=None):
    signers = read_allowed_signers(tmp_path / "allowed_signers")
    envelope = envelope if envelope is not None else sign_approval(key, RECORD)
    return check_approval(envelope, record, signers, path=_path(key), author=author, at=at,
                          signers_then=signers_then)


def test_an_approval_verifies_over_its_record_by_a_listed_key(tmp_path, keys, author):
    approval = _check(tmp_path, keys["bob"], author)
    assert approval.principal == "bob@example.com" and approval.fingerprint == keys["bob"].fingerprint
    assert approval.time == NOW and approval.to_dict()["time"] == ssh_time(NOW)
    name = approval_name(keys["bob"].fingerprint)
    assert name.endswith(".sig") and "/" not in name and "+" not in name


def test_an_approval_over_another_record_is_rejected(tmp_path, keys, author):
    with pytest.raises(VerificationError, match="made over another record"):
        _check(tmp_path, keys["bob"], author, record=OTHER)


def test_a_tampered_approval_is_rejected(tmp_path, keys, author):
    envelope = sign_approval(keys["bob"], RECORD)
    broken = copy.deepcopy(envelope)
    sig = broken["signatures"][0]["sig"]
    broken["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(VerificationError, match="not valid"):
        _check(tmp_path, keys["bob"], author, envelope=broken)
    doubled = copy.deepcopy(envelope)
    doubled["signatures"].append(sign_approval(keys["carol"], RECORD)["signatures"][0])
    with pytest.raises(VerificationError, match="one signature"):
        _check(tmp_path, keys["bob"], author, envelope=doubled)


def test_the_edit_signature_is_not_an_approval(tmp_path, keys, author):
    """edit.sig's namespace is cathrepo-edit: the author's own signature cannot be replayed as an approval,
    nor can a co-signature made for the edit."""
    with pytest.raises(VerificationError, match="namespace 'cathrepo-edit', expected 'cathrepo-approval'"):
        _check(tmp_path, keys["bob"], author, envelope=sign_payload(keys["bob"], RECORD))


def test_a_key_not_listed_cannot_approve(tmp_path, keys, author):
    with pytest.raises(VerificationError, match="not in allowed_signers"):
        _check(tmp_path, keys["dave"], author)


def test_an_approval_filed_under_another_key_is_rejected(tmp_path, keys, author):
    signers = read_allowed_signers(tmp_path / "allowed_signers")
    with pytest.raises(VerificationError, match="not by the key its file name says"):
        check_approval(sign_approval(keys["carol"], RECORD), RECORD, signers, path=_path(keys["bob"]),
                       author=author, at=NOW)


def test_the_author_cannot_approve_their_own_edit(tmp_path, keys, author):
    with pytest.raises(VerificationError, match="approved their own edit"):
        _check(tmp_path, keys["alice"], author)
    by_name = Author(principal="someone@example.com", fingerprint="SHA256:x", name="bob@example.com")
    with pytest.raises(VerificationError, match="own edit"):
        _check(tmp_path, keys["bob"], by_name)  # the record's author field names bob


def test_revocation_keeps_earlier_approvals_and_rejects_later_ones(tmp_path, keys, author):
    path = tmp_path / "allowed_signers"
    before = path.read_text()
    (revoked,) = revoke_signer(path, keys["bob"].fingerprint, NOW)
    after = path.read_text()
    assert revoked.valid_before == NOW and revoked.revoked
    assert len(after.splitlines()) == len(before.splitlines())  # the line stays
    assert f'valid-before="{ssh_time(NOW)}"' in after
    assert [line for line in after.splitlines() if "bob" not in line] == \
        [line for line in before.splitlines() if "bob" not in line]
    assert _check(tmp_path, keys["bob"], author, at=NOW - 60).principal == "bob@example.com"
    assert _check(tmp_path, keys["bob"], author, at=NOW).principal == "bob@example.com"  # up to the second
    with pytest.raises(VerificationError, match="revoked"):
        _check(tmp_path, keys["bob"], author, at=NOW + 1)
    with pytest.raises(SigningError, match="revoked already"):
        revoke_signer(path, keys["bob"].fingerprint, NOW)
    with pytest.raises(SigningError, match="No key"):
        revoke_signer(path, keys["dave"].fingerprint, NOW)


def test_an_approval_made_on_top_of_the_revocation_is_rejected_whatever_its_date(tmp_path, keys, author):
    """A backdated approval: its commit claims a time before the revocation, but the allowed_signers of
    that very commit already revoked the key."""
    then = tmp_path / "then"
    then.mkdir()
    shutil.copy(tmp_path / "allowed_signers", then / "allowed_signers")
    revoke_signer(then / "allowed_signers", keys["bob"].fingerprint, NOW)
    revoke_signer(tmp_path / "allowed_signers", keys["bob"].fingerprint, NOW)
    with pytest.raises(VerificationError, match="already revoked in the commit"):
        _check(tmp_path, keys["bob"], author, at=NOW - 3600,
               signers_then=read_allowed_signers(then / "allowed_signers"))


def test_find_signer_at_a_time_and_time_parsing(tmp_path, keys):
    revoke_signer(tmp_path / "allowed_signers", keys["carol"].fingerprint, NOW)
    signers = read_allowed_signers(tmp_path / "allowed_signers")
    assert find_signer(signers, keys["carol"].public_key) is not None  # known, whatever the time
    assert find_signer(signers, keys["carol"].public_key, at=NOW - 1) is not None
    assert find_signer(signers, keys["carol"].public_key, at=NOW + 1) is None
    assert absolute_time(ssh_time(NOW)) == NOW
    assert absolute_time("20250101Z") == 1735689600 and absolute_time("garbage") == 0


def test_one_principal_counts_once():
    from cathrepo.provenance.approvals import Approval

    approvals = [Approval("bob@x", "SHA256:a", "p1"), Approval("bob@x", "SHA256:b", "p2"), Approval("c@x", "SHA256:c", "p3")]
    assert approvers(approvals) == ["bob@x", "c@x"]


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_ssh_keygen_reads_a_revoked_line_as_cathrepo_does(tmp_path, keys):
    """The line revoke_signer writes is one ssh-keygen honours: a signature checked at a time before the
    revocation verifies, after it fails, exactly as find_signer(at=...) says."""
    bob = keys["bob"]
    message = tmp_path / "message"
    message.write_bytes(RECORD)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", str(bob.private_path), "-n", "cathrepo-approval",
                    str(message)], check=True, capture_output=True)
    revoke_signer(tmp_path / "allowed_signers", bob.fingerprint, NOW)
    signers = read_allowed_signers(tmp_path / "allowed_signers")
    for at in (NOW - 10, NOW + 10):
        done = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed_signers"),
                               "-I", bob.principal, "-n", "cathrepo-approval", "-s", f"{message}.sig",
                               f"-Overify-time={ssh_time(at)}"], input=RECORD, capture_output=True)
        ours = find_signer(signers, bob.public_key, principal=bob.principal, at=at) is not None
        assert (done.returncode == 0) == ours == (at < NOW), (at, done.stderr)


def test_the_record_keeps_its_bytes_without_topics_and_names_them_with():
    from cathrepo.provenance.manifest import EditRecord

    base = dict(action="edit", fact={"prompt": "p"}, method="rome", params={}, site={}, source=None, author="a",
                created="2025-01-01T00:00:00+00:00", confidence=1.0, risk="low", base_model={}, files={})
    plain, tagged = EditRecord(**base), EditRecord(**base, topics=("medical",))
    assert "topics" not in json.loads(plain.to_bytes())
    assert json.loads(tagged.to_bytes())["topics"] == ["medical"]
    assert EditRecord.from_bytes(tagged.to_bytes()) == tagged and tagged.id != plain.id
