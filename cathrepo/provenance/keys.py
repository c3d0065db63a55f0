"""Signing keys: create, load and fingerprint the Ed25519 keys that sign commits and edits.

Keys are OpenSSH files so that git's own SSH signing (``gpg.format ssh``, which runs ``ssh-keygen -Y
sign``) can use them directly, and so that ``git verify-commit`` and hosting services understand the
signatures. They live in the user's configuration directory, never in a repository: a private key
committed by accident cannot be uncommitted from every clone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cathrepo.exceptions import SigningError
from cathrepo.files import atomic_write, user_dir

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

KEY_TYPE = "ssh-ed25519"


def config_dir() -> Path:
    """Where cathrepo keeps per-user settings and keys.

    ``$CATHREPO_CONFIG_DIR`` wins (tests and CI point it at a scratch directory), then
    ``$XDG_CONFIG_HOME/cathrepo``, then ``~/.config/cathrepo``.
    """
    return user_dir("config")


def split_public_key(public_key: str) -> tuple[str, str, str]:
    """Split an OpenSSH public key line into (key type, base64 blob, comment).

    Raises:
        SigningError: when the line is not ``<type> <base64> [comment]`` with a decodable blob.
    """
    parts = public_key.strip().split(None, 2)
    if len(parts) < 2:
        raise SigningError(
            f"'{public_key[:40]}' is not an OpenSSH public key.",
            hint="Expected a line like 'ssh-ed25519 AAAA... alice@example.com'.",
        )
    try:
        base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise SigningError(
            f"The public key '{parts[1][:20]}...' is not valid base64.",
            hint="Copy the whole line of the .pub file.",
        ) from None
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""


def fingerprint_of(public_key: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key, exactly as ``ssh-keygen -lf`` prints it."""
    _, blob, _ = split_public_key(public_key)
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key on disk and the identity it signs as.

    Attributes:
        private_path: the OpenSSH private key file (mode 0600); git's ``user.signingkey`` points here.
        public_key: the one-line OpenSSH form "ssh-ed25519 AAAA... principal".
        principal: the identity (an e-mail address) recorded in ``allowed_signers``.
    """

    private_path: Path
    public_key: str
    principal: str

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64 without padding>``, as ``ssh-keygen -lf`` prints it."""
        return fingerprint_of(self.public_key)

    @property
    def public_key_bare(self) -> str:
        """"ssh-ed25519 AAAA..." without the comment: what allowed_signers and envelopes compare."""
        key_type, blob, _ = split_public_key(self.public_key)
        return f"{key_type} {blob}"


def keys_dir() -> Path:
    """The directory holding cathrepo's keys (``config_dir()/keys``)."""
    return config_dir() / "keys"


def _work_tree_above(path: Path) -> Path | None:
    """The git work tree that contains ``path`` (or would, once created), if any."""
    for candidate in (path, *path.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def _private_key_from(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningError(
            f"No signing key at {path}.",
            hint="Run 'cathrepo init' (which creates one) or pass the path of an Ed25519 key.",
        ) from None
    except OSError as exc:
        raise SigningError(f"Cannot read the signing key {path}: {exc.strerror}.",
                           hint="Check the file's owner and permissions.") from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(
            f"{path} is not a usable OpenSSH private key ({exc}).",
            hint="cathrepo needs an unencrypted Ed25519 key: ssh-keygen -t ed25519 -N '' -f <path>.",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(
            f"{path} holds a {type(key).__name__.replace('_', '')} key; cathrepo signs with Ed25519 only.",
            hint="Create one with: ssh-keygen -t ed25519 -N '' -f <path>.",
        )
    return key


def private_key(key: SigningKey) -> Ed25519PrivateKey:
    """The cryptography object of ``key``'s private half, read from disk when needed."""
    return _private_key_from(key.private_path)


def _public_line(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode("ascii")


def load_key(path: Path, *, principal: str | None = None) -> SigningKey:
    """Load an existing Ed25519 private key.

    Args:
        path: the OpenSSH private key file.
        principal: the identity to sign as; defaults to the comment of ``<path>.pub``.

    Raises:
        SigningError: missing, unreadable, group/world-readable (ssh-keygen would refuse it), encrypted
            or not Ed25519.
    """
    path = Path(path).expanduser().absolute()
    key = _private_key_from(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SigningError(
            f"The signing key {path} is readable by other users (mode {mode:o}); ssh-keygen refuses it.",
            hint=f"Run: chmod 600 {path}",
        )
    bare = _public_line(key)
    if principal is None:
        pub = path.with_name(path.name + ".pub")
        principal = ""
        if pub.is_file():
            key_type, blob, comment = split_public_key(pub.read_text(encoding="utf-8"))
            if f"{key_type} {blob}" == bare:
                principal = comment.strip()
            else:
                log.warning("%s does not match its private key; ignoring its comment.", pub)
    public_key = f"{bare} {principal}" if principal else bare
    return SigningKey(private_path=path, public_key=public_key, principal=principal)


def ensure_key(principal: str, *, name: str = "id_ed25519") -> SigningKey:
    """Return the user's signing key ``name``, creating it on first use.

    The private key is written in OpenSSH format with mode 0600 in a 0700 directory, atomically, so a
    crash never leaves half a key and two processes racing to create it agree on one key.

    Args:
        principal: the identity the key signs as (an e-mail address); it becomes the .pub comment.
        name: file name of the key inside ``config_dir()/keys``.

    Raises:
        SigningError: when the key directory lies inside a git work tree (a key there could be
            committed) or the key cannot be written or read.
    """
    if not principal.strip() or any(c.isspace() for c in principal):
        raise SigningError(f"'{principal}' cannot be a signing identity.",
                           hint="Use an e-mail-like identity without spaces, e.g. alice@example.com.")
    if "/" in name or name.startswith("."):
        raise SigningError(f"'{name}' is not a plain key file name.", hint="Use a name like 'id_ed25519'.")
    directory = keys_dir().absolute()
    tree = _work_tree_above(directory)
    if tree is not None:
        raise SigningError(
            f"Refusing to keep a private key in {directory}: it is inside the git work tree {tree}.",
            hint="Set CATHREPO_CONFIG_DIR to a directory outside any repository.",
        )
    path = directory / name
    if not path.exists():
        _create_key(path, principal)
    return load_key(path, principal=principal)


def _create_key(path: Path, principal: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        if not atomic_write(path, pem, mode=0o600, overwrite=False):
            log.info("Another process created %s first; using its key.", path)
            return
        public = f"{_public_line(key)} {principal}\n"
        atomic_write(path.with_name(path.name + ".pub"), public.encode("utf-8"), mode=0o644)
    except OSError as exc:
        raise SigningError(f"Cannot create the signing key {path}: {exc.strerror}.",
                           hint="Check that the directory is writable or set CATHREPO_CONFIG_DIR.") from None
    log.info("Created signing key %s for %s.", path, principal)
