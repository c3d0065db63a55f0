"""The ``allowed_signers`` file: who may sign commits and edits in a repository.

It is git's ``gpg.ssh.allowedSignersFile`` format, read by ``ssh-keygen -Y verify`` (see "ALLOWED
SIGNERS" in ssh-keygen(1)), so one file serves ``git verify-commit`` and cathrepo's own ``edit.sig``
checks alike. A line is ``principal[,principal...] [options] key-type base64 [comment]``; ``#`` starts
a comment line. Principals are patterns (``*@example.com``, ``!mallory@example.com``); the options
cathrepo honours are ``namespaces="..."`` and ``cert-authority`` (CA lines never match a plain key).
"""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cathrepo.exceptions import ConfigError, SigningError
from cathrepo.files import atomic_write
from cathrepo.provenance.keys import fingerprint_of, split_public_key

_KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-", "sk-", "rsa-sha2-")


@dataclass(frozen=True)
class AllowedSigner:
    """One line of an allowed-signers file.

    Attributes:
        principals: identity patterns this key may sign as.
        key_type: "ssh-ed25519", "ecdsa-sha2-nistp256", ...
        key: the base64 public key blob.
        options: raw option strings such as ``namespaces="git,cathrepo-edit"``.
        comment: free text after the key.
    """

    principals: tuple[str, ...]
    key_type: str
    key: str
    options: tuple[str, ...] = ()
    comment: str = ""

    @property
    def principal(self) -> str:
        """The first principal pattern, the one cathrepo shows."""
        return self.principals[0]

    @property
    def public_key(self) -> str:
        """"<type> <base64>", the form envelopes and comparisons use."""
        return f"{self.key_type} {self.key}"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.public_key)

    @property
    def cert_authority(self) -> bool:
        return any(opt.lower() == "cert-authority" for opt in self.options)

    @property
    def namespaces(self) -> tuple[str, ...] | None:
        """The namespaces this key may sign in, or None when unrestricted."""
        for opt in self.options:
            name, _, value = opt.partition("=")
            if name.lower() == "namespaces":
                return tuple(v.strip() for v in value.strip('"').split(",") if v.strip())
        return None

    def allows_principal(self, principal: str) -> bool:
        """Whether ``principal`` matches the pattern list (a matching ``!pattern`` denies)."""
        allowed = False
        for pattern in self.principals:
            if pattern.startswith("!"):
                if fnmatch.fnmatchcase(principal, pattern[1:]):
                    return False
            elif fnmatch.fnmatchcase(principal, pattern):
                allowed = True
        return allowed

    def allows_namespace(self, namespace: str) -> bool:
        names = self.namespaces
        return names is None or any(fnmatch.fnmatchcase(namespace, n) for n in names)

    def to_line(self) -> str:
        """The line as it is written to the file (no trailing newline)."""
        fields = [",".join(self.principals), *([",".join(self.options)] if self.options else []),
                  self.key_type, self.key]
        if self.comment:
            fields.append(self.comment)
        return " ".join(fields)


def _split_options(token: str) -> tuple[str, ...]:
    """Split ``a,b="x,y",c`` on commas outside double quotes."""
    out, current, quoted = [], "", False
    for ch in token:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return tuple(o for o in out if o)


def parse_line(line: str) -> AllowedSigner | None:
    """Parse one line; None for blank and comment lines.

    Raises:
        ValueError: with the reason, when the line is not in the format.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    lexer = shlex.shlex(text, posix=False)
    lexer.whitespace_split = True
    lexer.commenters = ""
    tokens = list(lexer)
    if len(tokens) < 3:
        raise ValueError("expected 'principals [options] key-type base64'")
    principals = tuple(p for p in tokens[0].strip('"').split(",") if p)
    rest = tokens[1:]
    options: tuple[str, ...] = ()
    if not rest[0].startswith(_KEY_TYPE_PREFIXES) and "@openssh.com" not in rest[0]:
        options, rest = _split_options(rest[0]), rest[1:]
    if len(rest) < 2:
        raise ValueError("the key type or the base64 key is missing")
    key_type, key = rest[0], rest[1]
    try:
        split_public_key(f"{key_type} {key}")
    except SigningError as exc:
        raise ValueError(exc.message) from None
    if not principals:
        raise ValueError("no principal")
    return AllowedSigner(principals, key_type, key, options, " ".join(rest[2:]))


def parse_allowed_signers(text: str, *, source: str = "allowed_signers") -> list[AllowedSigner]:
    """Parse the whole file's text; ``source`` names it in errors."""
    signers = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            signer = parse_line(line)
        except ValueError as exc:
            raise ConfigError(
                f"{source} line {number} is malformed: {exc}.",
                hint="Each line is 'principal[,principal] [options] ssh-ed25519 AAAA... [comment]'.",
            ) from None
        if signer is not None:
            signers.append(signer)
    return signers


def read_allowed_signers(path: Path) -> list[AllowedSigner]:
    """Read an allowed-signers file.

    Raises:
        ConfigError: when the file is missing or a line is malformed.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"The allowed signers file {path} does not exist.",
            hint="Add yourself with 'cathrepo init' or restore the file from git.",
        ) from None
    return parse_allowed_signers(text, source=str(path))


def find_signer(
    signers: Iterable[AllowedSigner], public_key: str, *, principal: str | None = None
) -> AllowedSigner | None:
    """The first line that lists ``public_key`` (and allows ``principal`` when given).

    Certificate-authority lines are skipped: they vouch for certificates, not for a bare key.
    """
    key_type, blob, _ = split_public_key(public_key)
    for signer in signers:
        if signer.cert_authority or signer.key_type != key_type or signer.key != blob:
            continue
        if principal is None or signer.allows_principal(principal):
            return signer
    return None


def add_signer(path: Path, principal: str, public_key: str) -> bool:
    """Allow ``public_key`` to sign as ``principal``; idempotent.

    Existing lines, comments included, are kept as they are; the new line is appended and the file is
    replaced atomically.

    Returns:
        True when a line was added, False when the key was already allowed for that principal.
    """
    if not principal or any(c.isspace() or c == "," for c in principal):
        raise SigningError(f"'{principal}' cannot be a principal in allowed_signers.",
                           hint="Use an e-mail-like identity without spaces or commas.")
    key_type, blob, _ = split_public_key(public_key)
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    signers = parse_allowed_signers(text, source=str(path))
    existing = find_signer(signers, public_key, principal=principal)
    if existing is not None and existing.namespaces is None:
        return False
    if text and not text.endswith("\n"):
        text += "\n"
    text += AllowedSigner((principal,), key_type, blob).to_line() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode("utf-8"), mode=0o644)
    return True
