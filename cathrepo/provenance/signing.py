"""Signature envelopes (``edit.sig``): an edit that can be verified without git.

Commits are signed by git itself; an edit exported from its repository (a tarball, an adapter handed to
a serving team) still needs to prove who made it. ``edit.sig`` is a JSON envelope over ``edit.json``
(which holds the hash of every other file of the edit)::

    {"schema_version": 1, "namespace": "cathrepo-edit", "payload_sha256": "<hex>",
     "signatures": [{"principal": ..., "public_key": "ssh-ed25519 AAAA...", "fingerprint": "SHA256:...",
                     "sig": "<base64 Ed25519 signature>"}]}

What each key signs is OpenSSH's SSHSIG message (PROTOCOL.sshsig): the magic ``SSHSIG``, the namespace
and the SHA-256 of the payload. The namespace and the magic give domain separation (a signature over an
edit cannot be replayed as a commit signature or as any other SSH signature), and the format means
``ssh-keygen -Y verify`` can check an envelope too (:func:`sshsig_armor`). More signatures can be
added later (:func:`add_signature`): an approver co-signs the same payload.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

from cathrepo.exceptions import SigningError, VerificationError
from cathrepo.files import atomic_write
from cathrepo.provenance.allowed_signers import AllowedSigner, Written, find_signer, ssh_time
from cathrepo.provenance.keys import KEY_TYPE, SigningKey, fingerprint_of, private_key, split_public_key

SCHEMA_VERSION = 1
DEFAULT_NAMESPACE = "cathrepo-edit"
_HASH_ALGORITHM = "sha256"
_MAGIC = b"SSHSIG"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _string(data: bytes) -> bytes:
    """SSH wire encoding of a byte string: uint32 length, then the bytes."""
    return struct.pack(">I", len(data)) + data


def signed_message(namespace: str, payload_sha256: str) -> bytes:
    """The exact bytes a key signs: OpenSSH's SSHSIG "signed data" over the payload's SHA-256."""
    return (_MAGIC + _string(namespace.encode("utf-8")) + _string(b"")
            + _string(_HASH_ALGORITHM.encode("ascii")) + _string(bytes.fromhex(payload_sha256)))


def _signature_entry(key: SigningKey, namespace: str, payload_sha256: str) -> dict[str, str]:
    if not key.public_key.startswith(KEY_TYPE + " "):
        raise SigningError(f"{key.private_path} is not an Ed25519 key.", hint="cathrepo signs with Ed25519.")
    secret = private_key(key)
    public = key.public_key_bare
    from cryptography.hazmat.primitives import serialization

    derived = secret.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if derived.decode("ascii") != public:
        raise SigningError(f"The public key given for {key.private_path} is not its own.",
                           hint="Reload the key with cathrepo.provenance.keys.load_key.")
    sig = secret.sign(signed_message(namespace, payload_sha256))
    return {"principal": key.principal, "public_key": public, "fingerprint": key.fingerprint,
            "sig": base64.b64encode(sig).decode("ascii")}


def sign_payload(key: SigningKey, payload: bytes, *, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """Sign ``payload`` (the bytes of ``edit.json``) and return a JSON-ready envelope.

    Raises:
        SigningError: the key cannot be read or has no principal to sign as.
    """
    if not key.principal:
        raise SigningError(f"The key {key.private_path} has no principal to sign as.",
                           hint="Load it with load_key(path, principal='you@example.com').")
    digest = hashlib.sha256(payload).hexdigest()
    return {"schema_version": SCHEMA_VERSION, "namespace": namespace, "payload_sha256": digest,
            "signatures": [_signature_entry(key, namespace, digest)]}


def add_signature(envelope: dict[str, Any], key: SigningKey, payload: bytes) -> dict[str, Any]:
    """Return a copy of ``envelope`` co-signed by ``key`` (an approver); the input is not changed.

    A key that already signed is not added twice.

    Raises:
        SigningError: the envelope is malformed or was made over different bytes than ``payload``.
    """
    try:
        _check_shape(envelope, what="the envelope")
    except VerificationError as exc:
        raise SigningError(f"Cannot co-sign: {exc.message}") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != envelope["payload_sha256"]:
        raise SigningError("Cannot co-sign: the envelope was made over different bytes than the ones given.",
                           hint="Co-sign the exact file the author signed (re-read it from the revision).")
    result = copy.deepcopy(envelope)
    if any(s["fingerprint"] == key.fingerprint for s in result["signatures"]):
        return result
    result["signatures"].append(_signature_entry(key, envelope["namespace"], digest))
    return result


def _malformed(what: str, why: str) -> VerificationError:
    return VerificationError(f"{what}: the signature envelope is malformed ({why}).",
                             hint="Restore the file from the repository or re-sign the edit.")


def _check_shape(envelope: Any, *, what: str) -> None:
    if not isinstance(envelope, dict):
        raise _malformed(what, "not a JSON object")
    version = envelope.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise VerificationError(f"{what}: the signature envelope has schema_version {version}.",
                                hint="It was written by a newer cathrepo; upgrade cathrepo to verify it.")
    if version != SCHEMA_VERSION:
        raise _malformed(what, f"schema_version {version!r}, expected {SCHEMA_VERSION}")
    if not isinstance(envelope.get("namespace"), str):
        raise _malformed(what, "no namespace")
    if not isinstance(envelope.get("payload_sha256"), str) or not _HEX64.match(envelope["payload_sha256"]):
        raise _malformed(what, "payload_sha256 is not 64 lowercase hex digits")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise _malformed(what, "no signatures")
    for entry in signatures:
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("principal", "public_key", "fingerprint", "sig")
        ):
            raise _malformed(what, "a signature lacks principal, public_key, fingerprint or sig")


def _verify_entry(entry: dict[str, str], envelope: dict[str, Any], signers: list[AllowedSigner],
                  *, what: str, at: int | None = None, then: Written | None = None) -> str:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    principal, namespace = entry["principal"], envelope["namespace"]
    try:
        key_type, blob, _ = split_public_key(entry["public_key"])
        fingerprint = fingerprint_of(entry["public_key"])
        sig = base64.b64decode(entry["sig"], validate=True)
        public = load_ssh_public_key(f"{key_type} {blob}".encode("ascii"))
    except (SigningError, binascii.Error, ValueError, UnicodeEncodeError):
        raise _malformed(what, f"the signature by {principal} does not decode") from None
    if key_type != KEY_TYPE or not isinstance(public, Ed25519PublicKey):
        raise _malformed(what, f"the signature by {principal} uses {key_type}, not {KEY_TYPE}")
    if fingerprint != entry["fingerprint"]:
        raise _malformed(what, f"the fingerprint recorded for {principal} is not its key's")
    known = find_signer(signers, entry["public_key"], principal=principal)
    signer = known if at is None else find_signer(signers, entry["public_key"], principal=principal, at=at)
    if known is not None and signer is None and at is not None:
        raise VerificationError(
            f"{what} is signed by {principal} ({fingerprint}) at {ssh_time(at)}, when allowed_signers did not "
            "let that key sign" + (" (it was revoked)" if known.revoked else "") + ".",
            hint="A revoked key's signatures count only from before its revocation; sign again with a valid key.",
        )
    if signer is None or not signer.allows_namespace(namespace):
        raise VerificationError(
            f"{what} is signed by {principal} ({fingerprint}), who is not in allowed_signers"
            + ("" if signer is None else f" for namespace '{namespace}'") + ".",
            hint="If this person may sign, add their public key to allowed_signers in a reviewed commit.",
        )
    if then is not None and then.signers is not None:
        before = find_signer(then.signers, entry["public_key"], principal=principal)
        if before is not None and before.revoked:
            raise VerificationError(
                f"{what}: {principal}'s key {fingerprint} was already revoked in the commit that wrote it "
                f"({(then.commit or '?')[:12]}).",
                hint="A signature committed on top of its key's revocation does not count, whatever time it "
                     "claims; sign again with a valid key.",
            )
    try:
        public.verify(sig, signed_message(namespace, envelope["payload_sha256"]))
    except InvalidSignature:
        raise VerificationError(
            f"{what}: the signature by {principal} ({fingerprint}) is not valid.",
            hint="The envelope was altered after signing; do not trust this edit, re-create and re-sign it.",
        ) from None
    return principal


def verify_signatures(envelope: dict[str, Any], payload: bytes, signers: list[AllowedSigner], *,
                      namespace: str = DEFAULT_NAMESPACE, what: str, at: int | None = None,
                      then: Written | None = None) -> list[str]:
    """Check every signature of ``envelope`` over ``payload``; return the signers' principals in order.

    Every signature must hold: one bad co-signature means the envelope was tampered with. With ``at``
    (when the signature was made, seconds since the epoch) each key must be valid then
    (``valid-after``/``valid-before``, as ssh-keygen checks a commit at its committer time): a revoked
    key's signatures made before its revocation still verify, later ones do not. With ``then`` (the
    commit that wrote the signed file and its ``allowed_signers``) a key that commit already revoked is
    refused too, whatever ``at`` says: a backdated time does not bring a revoked key back.

    Raises:
        VerificationError: naming ``what`` and saying why: malformed envelope, wrong namespace, hash
            mismatch, a signer not in ``allowed_signers``, or a bad signature.
    """
    _check_shape(envelope, what=what)
    if envelope["namespace"] != namespace:
        raise VerificationError(
            f"{what}: the signature is for namespace '{envelope['namespace']}', expected '{namespace}'.",
            hint="A signature made for another purpose cannot vouch for this file.",
        )
    actual = hashlib.sha256(payload).hexdigest()
    if actual != envelope["payload_sha256"]:
        raise VerificationError(
            f"{what} was changed after it was signed (SHA-256 {actual[:12]}…, signed "
            f"{envelope['payload_sha256'][:12]}…).",
            hint="Restore it from the repository (git checkout -- <file>) or re-sign a new edit.",
        )
    return [_verify_entry(entry, envelope, signers, what=what, at=at, then=then) for entry in envelope["signatures"]]


def verify_payload(envelope: dict[str, Any], payload: bytes, signers: list[AllowedSigner], *,
                   namespace: str = DEFAULT_NAMESPACE, what: str, at: int | None = None,
                   then: Written | None = None) -> str:
    """Check ``envelope`` over ``payload`` and return the principal of its first (author) signature.

    Raises:
        VerificationError: see :func:`verify_signatures`.
    """
    return verify_signatures(envelope, payload, signers, namespace=namespace, what=what, at=at, then=then)[0]


def sshsig_armor(envelope: dict[str, Any], index: int = 0) -> str:
    """One signature of ``envelope`` as an armored SSH signature for ``ssh-keygen -Y verify``.

    ``ssh-keygen -Y verify -f allowed_signers -I <principal> -n <namespace> -s <file> < payload``
    then checks the edit with OpenSSH alone.
    """
    _check_shape(envelope, what="the envelope")
    entry = envelope["signatures"][index]
    _, blob, _ = split_public_key(entry["public_key"])
    sig_blob = _string(KEY_TYPE.encode("ascii")) + _string(base64.b64decode(entry["sig"]))
    raw = (_MAGIC + struct.pack(">I", 1) + _string(base64.b64decode(blob))
           + _string(envelope["namespace"].encode("utf-8")) + _string(b"")
           + _string(_HASH_ALGORITHM.encode("ascii")) + _string(sig_blob))
    text = base64.b64encode(raw).decode("ascii")
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n"


def write_envelope(path: Path, envelope: dict[str, Any]) -> None:
    """Write ``envelope`` as sorted, indented JSON with a trailing newline, atomically."""
    text = json.dumps(envelope, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    atomic_write(Path(path), text.encode("utf-8"))


def read_envelope(path: Path, what: str) -> dict[str, Any]:
    """Read an envelope; ``what`` names the signed file in errors.

    Raises:
        VerificationError: the envelope is missing or not JSON.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VerificationError(f"{what} has no signature: {path} is missing.",
                                hint="Restore it from the repository, or re-sign the edit.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{what}: cannot read its signature {path} ({exc}).",
                                hint="Restore it from the repository, or re-sign the edit.") from None
    _check_shape(data, what=what)
    return data
