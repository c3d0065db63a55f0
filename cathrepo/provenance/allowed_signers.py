"""The ``allowed_signers`` file: who may sign commits and edits in a repository.

It is git's ``gpg.ssh.allowedSignersFile`` format, read by ``ssh-keygen -Y verify`` (see "ALLOWED
SIGNERS" in ssh-keygen(1)), so one file serves ``git verify-commit`` and cathrepo's own ``edit.sig``
checks alike. A line is ``principal[,principal...] [options] key-type base64 [comment]``; ``#`` starts
a comment line. Principals are patterns (``*@example.com``, ``!mallory@example.com``); the options
cathrepo honours are ``namespaces="..."``, ``cert-authority`` (CA lines never match a plain key) and
``valid-after="..."``/``valid-before="..."`` (ssh-keygen's times, checked against when a signature was
made). Revoking a key (:func:`revoke_signer`) writes ``valid-before`` into its line and never deletes
the line: what the key signed before still verifies, with git and ssh-keygen as with cathrepo.
"""

from __future__ import annotations

import calendar
import fnmatch
import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cathrepo.exceptions import ConfigError, SigningError
from cathrepo.files import atomic_write
from cathrepo.provenance.keys import fingerprint_of, split_public_key

_KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-", "sk-", "rsa-sha2-")


def absolute_time(text: str) -> int:
    """ssh-keygen's ``parse_absolute_time``: YYYYMMDD[HHMM[SS]], local time (tm_isdst 0) unless it ends
    in Z or UTC; 0 when unreadable."""
    upper = text.upper()
    cut = 1 if len(text) > 1 and upper.endswith("Z") else 3 if len(text) > 3 and upper.endswith("UTC") else 0
    digits = text[:len(text) - cut]
    fmt = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}.get(len(digits))
    try:
        tm = time.strptime(digits, fmt) if fmt and digits.isdigit() else None
        value = 0 if tm is None else calendar.timegm(tm) if cut else int(time.mktime((*tm[:8], 0)))
    except (ValueError, OverflowError):
        return 0
    return max(value, 0)


def ssh_time(when: int) -> str:
    """``when`` (seconds since the epoch) as ssh-keygen reads it back exactly: ``YYYYMMDDHHMMSSZ``."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y%m%d%H%M%SZ")


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

    def _time_option(self, name: str) -> int | None:
        for opt in self.options:
            key, _, value = opt.partition("=")
            if key.lower() == name:
                return absolute_time(value.strip('"'))
        return None

    @property
    def valid_after(self) -> int | None:
        """``valid-after`` in seconds since the epoch (None: no such option; 0: unreadable)."""
        return self._time_option("valid-after")

    @property
    def valid_before(self) -> int | None:
        """``valid-before`` in seconds since the epoch (None: no such option; 0: unreadable). cathrepo
        writes it to revoke a key."""
        return self._time_option("valid-before")

    @property
    def revoked(self) -> bool:
        return self.valid_before is not None

    def valid_at(self, when: int) -> bool:
        """Whether a signature made at ``when`` (seconds since the epoch) is within this line's validity,
        as ssh-keygen judges it (an unreadable time makes the line match nothing)."""
        after, before = self.valid_after, self.valid_before
        if after == 0 or before == 0:
            return False
        return (after is None or when >= after) and (before is None or when <= before)

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


@dataclass(frozen=True)
class Written:
    """The commit that wrote a signed file (or log line) and that commit's ``allowed_signers`` (None when
    it cannot be read): a key already revoked there does not sign what that commit adds, whatever time
    the signature claims."""

    commit: str | None
    signers: list[AllowedSigner] | None


def find_signer(
    signers: Iterable[AllowedSigner], public_key: str, *, principal: str | None = None, at: int | None = None
) -> AllowedSigner | None:
    """The first line that lists ``public_key`` (and allows ``principal`` when given, and is valid at
    ``at``, seconds since the epoch, when given).

    Certificate-authority lines are skipped: they vouch for certificates, not for a bare key. Without
    ``at`` the validity times are not looked at (the signer is known, not necessarily valid now).
    """
    key_type, blob, _ = split_public_key(public_key)
    for signer in signers:
        if signer.cert_authority or signer.key_type != key_type or signer.key != blob:
            continue
        if (principal is None or signer.allows_principal(principal)) and (at is None or signer.valid_at(at)):
            return signer
    return None


def revoke_signer(path: Path, fingerprint: str, when: int) -> list[AllowedSigner]:
    """Revoke the key with ``fingerprint`` as of ``when`` (seconds since the epoch): every line of that
    key gets ``valid-before`` (an earlier one is kept), nothing is deleted, other lines and comments stay
    byte for byte. Returns the lines as they now read.

    Raises:
        SigningError: no line lists that key, or every line of it was revoked already.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    parse_allowed_signers("".join(lines), source=str(path))  # a malformed file is refused before writing
    changed: list[AllowedSigner] = []
    seen = False
    for i, line in enumerate(lines):
        signer = parse_line(line)
        if signer is None or signer.cert_authority or signer.fingerprint != fingerprint:
            continue
        seen = True
        if signer.revoked:
            continue
        revoked = replace(signer, options=(*signer.options, f'valid-before="{ssh_time(when)}"'))
        lines[i] = revoked.to_line() + "\n"
        changed.append(revoked)
    if not seen:
        raise SigningError(f"No key {fingerprint} in {path}.", hint="List the keys with 'cathrepo keys list'.")
    if not changed:
        raise SigningError(f"The key {fingerprint} is revoked already.", hint="See 'cathrepo keys list'.")
    atomic_write(path, "".join(lines).encode("utf-8"), mode=0o644)
    return changed


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
