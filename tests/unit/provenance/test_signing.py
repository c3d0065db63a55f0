"""edit.sig envelopes: verify(sign(x)) holds, every kind of tampering fails, OpenSSH agrees."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cathrepo.exceptions import SigningError, VerificationError
from cathrepo.provenance.allowed_signers import add_signer, read_allowed_signers
from cathrepo.provenance.keys import ensure_key, load_key
from cathrepo.provenance.signing import (
    add_signature,
    read_envelope,
    sign_payload,
    signed_message,
    sshsig_armor,
    verify_payload,
    verify_signatures,
    write_envelope,
)

GOLDEN = Path(__file__).parent / "golden"
PAYLOAD = b'{"fact": {"subject": "Eiffel Tower", "target_new": "Rome"}, "schema_version": 1}\n'
WHAT = "edits/abc/edit.json"


@pytest.fixture
def alice(tmp_path):
    key = ensure_key("alice@example.com")
    add_signer(tmp_path / "allowed_signers", key.principal, key.public_key)
    return key


@pytest.fixture
def signers(tmp_path, alice):
    return read_allowed_signers(tmp_path / "allowed_signers")


def _fixed_key(tmp_path: Path, seed: int, principal: str):
    """A key from a fixed seed: Ed25519 is deterministic, so its envelopes are golden files."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / f"fixed-{seed}"
    secret = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    path.write_bytes(secret.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    path.chmod(0o600)
    return load_key(path, principal=principal)


def test_sign_then_verify(alice, signers):
    envelope = sign_payload(alice, PAYLOAD)
    assert envelope["schema_version"] == 1 and envelope["namespace"] == "cathrepo-edit"
    (entry,) = envelope["signatures"]
    assert entry["principal"] == "alice@example.com" and entry["fingerprint"] == alice.fingerprint
    assert verify_payload(envelope, PAYLOAD, signers, what=WHAT) == "alice@example.com"


def test_every_payload_byte_matters(alice, signers):
    envelope = sign_payload(alice, PAYLOAD)
    for index in (0, len(PAYLOAD) // 2, len(PAYLOAD) - 1):
        tampered = bytearray(PAYLOAD)
        tampered[index] ^= 0x01
        with pytest.raises(VerificationError, match=r"edits/abc/edit\.json was changed after it was signed"):
            verify_payload(envelope, bytes(tampered), signers, what=WHAT)


def test_tampered_envelope_fails(alice, signers):
    envelope = sign_payload(alice, PAYLOAD)
    forged = copy.deepcopy(envelope)
    forged["payload_sha256"] = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(VerificationError, match="not valid"):
        verify_payload(forged, b"other", signers, what=WHAT)
    flipped = copy.deepcopy(envelope)
    sig = bytearray(base64.b64decode(flipped["signatures"][0]["sig"]))
    sig[5] ^= 0x80
    flipped["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(VerificationError, match="signature by alice@example.com .* is not valid"):
        verify_payload(flipped, PAYLOAD, signers, what=WHAT)


def test_unknown_signer_fails(alice, signers):
    mallory = ensure_key("mallory@example.com", name="mallory")
    envelope = sign_payload(mallory, PAYLOAD)
    with pytest.raises(VerificationError, match="mallory@example.com .* not in allowed_signers"):
        verify_payload(envelope, PAYLOAD, signers, what=WHAT)
    # claiming to be alice with mallory's key does not help
    envelope["signatures"][0]["principal"] = "alice@example.com"
    with pytest.raises(VerificationError, match="not in allowed_signers"):
        verify_payload(envelope, PAYLOAD, signers, what=WHAT)


def test_wrong_namespace_fails(alice, signers):
    envelope = sign_payload(alice, PAYLOAD, namespace="cathrepo-deploy")
    with pytest.raises(VerificationError, match="namespace 'cathrepo-deploy', expected 'cathrepo-edit'"):
        verify_payload(envelope, PAYLOAD, signers, what=WHAT)
    # relabelling the namespace breaks the signature: the namespace is part of what was signed
    envelope["namespace"] = "cathrepo-edit"
    with pytest.raises(VerificationError, match="not valid"):
        verify_payload(envelope, PAYLOAD, signers, what=WHAT)
    assert signed_message("a", "00" * 32) != signed_message("b", "00" * 32)


@pytest.mark.parametrize("breakage", [
    lambda e: e.pop("signatures"),
    lambda e: e.update(signatures=[]),
    lambda e: e.update(schema_version=0),
    lambda e: e.update(payload_sha256="xyz"),
    lambda e: e["signatures"][0].pop("sig"),
    lambda e: e["signatures"][0].update(sig="%%%"),
    lambda e: e["signatures"][0].update(fingerprint="SHA256:nope"),
])
def test_malformed_envelope_fails(alice, signers, breakage):
    envelope = sign_payload(alice, PAYLOAD)
    breakage(envelope)
    with pytest.raises(VerificationError, match=r"edits/abc/edit\.json: the signature envelope is malformed"):
        verify_payload(envelope, PAYLOAD, signers, what=WHAT)


def test_newer_schema_asks_for_an_upgrade(alice, signers):
    envelope = sign_payload(alice, PAYLOAD)
    envelope["schema_version"] = 2
    with pytest.raises(VerificationError, match="upgrade cathrepo"):
        verify_payload(envelope, PAYLOAD, signers, what=WHAT)


def test_co_signature(tmp_path, alice):
    bob = ensure_key("bob@example.com", name="bob")
    envelope = sign_payload(alice, PAYLOAD)
    cosigned = add_signature(envelope, bob, PAYLOAD)
    assert len(envelope["signatures"]) == 1, "the input envelope is not changed"
    assert add_signature(cosigned, bob, PAYLOAD) == cosigned, "co-signing twice adds nothing"
    with pytest.raises(VerificationError, match="bob@example.com"):
        verify_signatures(cosigned, PAYLOAD, read_allowed_signers(tmp_path / "allowed_signers"), what=WHAT)
    add_signer(tmp_path / "allowed_signers", bob.principal, bob.public_key)
    signers = read_allowed_signers(tmp_path / "allowed_signers")
    assert verify_signatures(cosigned, PAYLOAD, signers, what=WHAT) == ["alice@example.com", "bob@example.com"]
    assert verify_payload(cosigned, PAYLOAD, signers, what=WHAT) == "alice@example.com"
    with pytest.raises(SigningError, match="different bytes"):
        add_signature(envelope, bob, PAYLOAD + b" ")


def test_envelope_file_round_trip(tmp_path, alice, signers):
    envelope = sign_payload(alice, PAYLOAD)
    path = tmp_path / "edit.sig"
    write_envelope(path, envelope)
    text = path.read_text()
    assert text.endswith("}\n") and text == json.dumps(envelope, sort_keys=True, indent=2) + "\n"
    assert read_envelope(path, WHAT) == envelope
    with pytest.raises(VerificationError, match=r"edits/abc/edit\.json has no signature"):
        read_envelope(tmp_path / "missing.sig", WHAT)
    path.write_text("{not json")
    with pytest.raises(VerificationError, match="cannot read its signature"):
        read_envelope(path, WHAT)


def test_golden_envelope(tmp_path):
    """The envelope format and the signed message are stable: a fixed key gives these exact bytes."""
    key = _fixed_key(tmp_path, 7, "golden@example.com")
    path = tmp_path / "edit.sig"
    write_envelope(path, sign_payload(key, PAYLOAD))
    assert path.read_text() == (GOLDEN / "edit.sig").read_text()
    signers_file = tmp_path / "allowed_signers"
    add_signer(signers_file, key.principal, key.public_key)
    envelope = read_envelope(GOLDEN / "edit.sig", WHAT)
    assert verify_payload(envelope, PAYLOAD, read_allowed_signers(signers_file), what=WHAT) == key.principal


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_openssh_verifies_the_envelope(tmp_path, alice):
    """What a key signs is OpenSSH's SSHSIG message, so ssh-keygen -Y verify accepts it unchanged."""
    bob = ensure_key("bob@example.com", name="bob")
    add_signer(tmp_path / "allowed_signers", bob.principal, bob.public_key)
    envelope = add_signature(sign_payload(alice, PAYLOAD), bob, PAYLOAD)
    for index, principal in enumerate(["alice@example.com", "bob@example.com"]):
        sig = tmp_path / f"sig{index}"
        sig.write_text(sshsig_armor(envelope, index))
        cmd = ["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed_signers"), "-I", principal,
               "-n", "cathrepo-edit", "-s", str(sig)]
        good = subprocess.run(cmd, input=PAYLOAD, capture_output=True)
        assert good.returncode == 0, good.stderr
        bad = subprocess.run(cmd, input=PAYLOAD + b"x", capture_output=True)
        assert bad.returncode != 0
