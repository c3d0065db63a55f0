"""Commit signatures checked in-process: ``git verify-commit`` for SSH-signed commits, without ssh-keygen.

Stage: provenance. git runs ssh-keygen twice per SSH-signed commit (20-30 ms): minutes for 10,000 commits.
For Ed25519 keys (all cathrepo makes) this module gives git's verdict itself, from the same rules: git's
payload, OpenSSH's SSHSIG in namespace ``git``, ``allowed_signers`` read at the committer's time. PGP and
X.509 signatures are left to git. It also signs as ``git commit -S`` does, for benchmarks of long histories.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import struct
import time
from dataclasses import dataclass

from cathrepo.exceptions import VerificationError
from cathrepo.provenance.allowed_signers import AllowedSigner, absolute_time
from cathrepo.provenance.keys import KEY_TYPE, SigningKey, fingerprint_of, private_key

NAMESPACE = "git"
_MAGIC = b"SSHSIG"
_BEGIN, _END = "-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----"
_OTHER_ARMOR = ("-----BEGIN PGP SIGNATURE-----", "-----BEGIN PGP MESSAGE-----",
                "-----BEGIN SIGNED MESSAGE-----")  # what git hands to gpg and gpgsm
_SIG_HEADERS = {"sha1": b"gpgsig", "sha256": b"gpgsig-sha256"}
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_COMMITTER_TIME = re.compile(rb"^committer [^\n]*> (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class SshSignature:
    """An SSHSIG signature taken apart.

    Attributes:
        public_key_blob: the signer's key in SSH wire format (string "ssh-ed25519", string 32-byte key).
        namespace: what the signature is for; commits use "git".
        hash_algorithm: "sha512" or "sha256", the hash of the payload that was signed.
        signature: the raw 64-byte Ed25519 signature.
    """

    public_key_blob: bytes
    namespace: str
    hash_algorithm: str
    signature: bytes

    @property
    def public_key(self) -> str:
        """"ssh-ed25519 AAAA...", the form allowed_signers lists."""
        return f"{KEY_TYPE} {base64.b64encode(self.public_key_blob).decode('ascii')}"


@dataclass(frozen=True)
class CommitSignatureCheck:
    """A commit's signature judged as ``git verify-commit`` would; the first four fields are those of
    ``cathrepo.repo.git_records.SignatureCheck`` (provenance may not import the repo stage).

    Attributes:
        code: the letter ``git log --format=%G?`` prints: G, B, U, N, or E (cannot be checked here).
        needs_git: a PGP or X.509 signature: ask git (``Git.verify_commit``); this module does not guess.
    """

    ok: bool
    principal: str | None
    fingerprint: str | None
    detail: str
    code: str
    needs_git: bool = False


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _read_strings(data: bytes, at: int, count: int) -> list[bytes]:
    """``count`` SSH wire strings (uint32 length, bytes) from ``at``, then the rest of ``data``."""
    out: list[bytes] = []
    for _ in range(count):
        size = int.from_bytes(data[at:at + 4], "big")
        if at + 4 + size > len(data):
            raise ValueError("it ends early")
        out, at = [*out, data[at + 4:at + 4 + size]], at + 4 + size
    return [*out, data[at:]]


def _signed_data(hash_algorithm: str, payload: bytes) -> bytes:
    """What the key signs (PROTOCOL.sshsig): magic, namespace, reserved "", hash name, H(payload)."""
    return (_MAGIC + _string(NAMESPACE.encode()) + _string(b"") + _string(hash_algorithm.encode())
            + _string(_HASHES[hash_algorithm](payload).digest()))


def split_signed_commit(raw: bytes, *, object_format: str = "sha1") -> tuple[bytes, str | None]:
    """The payload git verifies and the armored signature (None if unsigned) of a raw commit object.

    A port of git's ``parse_buffer_signed_by_header``: the ``gpgsig`` header (``gpgsig-sha256`` when
    ``object_format`` is "sha256") and its continuation lines are the signature; the other hash's header
    and its continuation lines are dropped from the payload too; the message is kept byte for byte.
    """
    header, payload, signature = _SIG_HEADERS[object_format] + b" ", bytearray(), bytearray()
    in_signature = other = saw = False
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos) + 1 or len(raw)
        line = raw[pos:end]
        sig = line[1:] if in_signature and line[:1] == b" " else None
        if sig is None and line.startswith(header):
            sig, other = line[len(header):], False
        elif sig is None:
            other = line.startswith(b"gpgsig") or (other and line[:1] == b" ")
        if sig is not None:
            signature += sig
            saw = in_signature = True
        else:
            if line[:1] == b"\n":
                end, line = len(raw), raw[pos:]  # the message, whole
            payload += b"" if other else line
            in_signature = False
        pos = end
    return bytes(payload), signature.decode("utf-8", "replace") if saw else None


def parse_sshsig(armored: str) -> SshSignature:
    """Read an armored SSH signature as ssh-keygen does.

    Raises:
        VerificationError: wrong armor, bad base64, no ``SSHSIG`` magic, a version other than 1, a key
            other than Ed25519, an unknown hash, or trailing data.
    """
    def malformed(why: str) -> VerificationError:
        return VerificationError(f"The commit's SSH signature is malformed ({why}).",
                                 hint="Do not trust the commit; ask its author to sign it again.")

    if not armored.startswith(_BEGIN + "\n") or "\n" + _END not in armored:
        raise malformed(f"no {_BEGIN} ... {_END} armor")
    try:
        body = armored[len(_BEGIN):armored.index("\n" + _END)]
        data = base64.b64decode("".join(body.split()), validate=True)
    except ValueError:
        raise malformed("its base64 does not decode") from None
    if data[:6] != _MAGIC or len(data) < 10:
        raise malformed("no SSHSIG magic")
    if (version := int.from_bytes(data[6:10], "big")) != 1:
        raise malformed(f"version {version}, expected 1")
    try:  # public key, namespace, reserved (ignored, as by ssh-keygen), hash algorithm, signature
        key, namespace, _, hash_name, sig_blob, rest = _read_strings(data, 10, 5)
        key_type, raw_key, key_rest = _read_strings(key, 0, 2)
        sig_type, raw_sig, sig_rest = _read_strings(sig_blob, 0, 2)
    except ValueError as exc:
        raise malformed(str(exc)) from None
    if key_type != KEY_TYPE.encode():
        raise malformed(f"a {key_type.decode('ascii', 'replace')} key; cathrepo checks {KEY_TYPE} only")
    if rest or key_rest or sig_rest or sig_type != key_type or len(raw_key) != 32 or len(raw_sig) != 64:
        raise malformed("trailing data, or an Ed25519 key or signature of the wrong size")
    if (hash_algorithm := hash_name.decode("ascii", "replace")) not in _HASHES:
        raise malformed(f"unsupported hash algorithm '{hash_algorithm}'")
    return SshSignature(key, namespace.decode("utf-8", "replace"), hash_algorithm, raw_sig)


def _namespaces(signer: AllowedSigner, blob: bytes, when: int) -> str | None:
    """The namespace patterns a line lets ``blob`` sign in ("*" if unrestricted), or None where ssh-keygen's
    ``check_allowed_keys_line`` passes it over: another key, a CA line, an unknown, repeated or unquoted
    option, an unreadable time, or ``when`` outside valid-after..valid-before."""
    rules: dict[str, str] = {}
    for option in signer.options:
        name, _, value = option.partition("=")
        if (name.lower() not in ("namespaces", "valid-after", "valid-before") or name.lower() in rules
                or len(value) < 2 or value[0] != '"' or value[-1] != '"'):
            return None  # cert-authority too: a CA line never vouches for a plain key
        rules[name.lower()] = value[1:-1]
    after, before = (absolute_time(rules[k]) if k in rules else 0 for k in ("valid-after", "valid-before"))
    if (("valid-after" in rules and not after) or ("valid-before" in rules and not before)
            or (after and before and before <= after)  # ssh-keygen refuses such a line
            or (after and when < after) or (before and when > before)):
        return None
    try:
        same = signer.key_type == KEY_TYPE and base64.b64decode(signer.key) == blob
    except ValueError:
        return None
    return rules.get("namespaces", "*") if same else None


def verify_commit_signature(raw_commit: bytes, signers: list[AllowedSigner], *,
                            object_format: str = "sha1") -> CommitSignatureCheck:
    """Judge ``raw_commit`` (``git cat-file commit`` bytes) as ``git verify-commit`` does with
    ``gpg.ssh.allowedSignersFile`` listing ``signers`` in this order; never raises over a signature."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    payload, armored = split_signed_commit(raw_commit, object_format=object_format)
    if armored is None:
        return CommitSignatureCheck(False, None, None, "no signature", "N")
    if armored.startswith(_OTHER_ARMOR):
        return CommitSignatureCheck(False, None, None, "a PGP or X.509 signature: check it with git", "E",
                                    needs_git=True)
    try:
        sig = parse_sshsig(armored)
    except VerificationError as exc:  # git says B for a broken SSH signature, and dies on an unknown armor
        code = "B" if armored.startswith(_BEGIN) else "E"
        return CommitSignatureCheck(False, None, None, exc.message, code)
    fingerprint, blob = fingerprint_of(sig.public_key), sig.public_key_blob
    why = "" if sig.namespace == NAMESPACE else f'it was made for namespace "{sig.namespace}", not "git"'
    try:
        if not why:
            Ed25519PublicKey.from_public_bytes(blob[-32:]).verify(sig.signature,
                                                                  _signed_data(sig.hash_algorithm, payload))
    except InvalidSignature:
        why = "the commit was changed after it was signed"
    found = _COMMITTER_TIME.search(payload.split(b"\n\n", 1)[0])
    when = int(found.group(1)) if found and int(found.group(1)) else int(time.time())  # git: no time, now
    if why:
        return CommitSignatureCheck(False, None, fingerprint, f"bad signature by {fingerprint}: {why}", "B")
    # 1. find-principals: the first line listing the key and valid at the committer's time, any namespace.
    first = next((s for s in signers if _namespaces(s, blob, when) is not None), None)
    if first is None:
        return CommitSignatureCheck(False, None, fingerprint, f"good signature, but the key {fingerprint} is "
                                    "not in allowed_signers (or not valid at the commit's time)", "U")
    # 2. verify -I <each of its principals>: a line must allow that principal, the key and namespace "git".
    for principal in first.principals:
        for signer in signers:
            names = _namespaces(signer, blob, when)
            if names is None or not signer.allows_principal(principal):
                continue
            # namespaces="..." is a pattern list like the principals ("!" denies): match it the same way
            if dataclasses.replace(signer, principals=tuple(names.split(","))).allows_principal(NAMESPACE):
                return CommitSignatureCheck(True, principal, fingerprint, f'Good "git" signature for '
                                            f"{principal} with ED25519 key {fingerprint}", "G")
    return CommitSignatureCheck(False, None, fingerprint, f"bad signature by {fingerprint}: allowed_signers "
                                f'does not let it sign as {first.principal} in namespace "git"', "B")


def sign_commit_payload(key: SigningKey, payload: bytes) -> str:
    """The armored signature ``git commit -S`` (``ssh-keygen -Y sign -n git``, sha512) puts in ``gpgsig``,
    byte for byte: Ed25519 signatures are deterministic.

    Raises:
        SigningError: the key cannot be read or is not Ed25519.
    """
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    secret = private_key(key)
    raw_key = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig_blob = _string(KEY_TYPE.encode()) + _string(secret.sign(_signed_data("sha512", payload)))
    wire = (_MAGIC + struct.pack(">I", 1) + _string(_string(KEY_TYPE.encode()) + _string(raw_key))
            + _string(NAMESPACE.encode()) + _string(b"") + _string(b"sha512") + _string(sig_blob))
    text = base64.b64encode(wire).decode("ascii")
    return "\n".join([_BEGIN, *(text[i:i + 70] for i in range(0, len(text), 70)), _END]) + "\n"


def signed_commit(payload: bytes, armored: str, *, object_format: str = "sha1") -> bytes:
    """``payload`` with the signature header where git's ``add_header_signature`` puts it: after the
    last header (the committer line, or encoding), each signature line prefixed with one space."""
    cut = payload.find(b"\n\n")
    at = len(payload) if cut < 0 else cut + 1
    lines = re.findall(rb"[^\n]*\n|[^\n]+$", armored.encode("utf-8"))
    return payload[:at] + _SIG_HEADERS[object_format] + b"".join(b" " + line for line in lines) + payload[at:]

