"""``cathrepo keys list|add|revoke``: who may sign and approve, kept in ``allowed_signers``.

Adding a signer appends its line; revoking writes ``valid-before="<time>"`` into the key's line and keeps
it, so every signature the key made before still verifies (git and ssh-keygen judge a commit at its
committer time, cathrepo an edit at its record's time and an approval at its commit's time) and every
later one fails. Each change is one signed commit of ``allowed_signers`` alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import InvalidInputError, SigningError
from cathrepo.files import atomic_write
from cathrepo.provenance.allowed_signers import AllowedSigner, absolute_time, ssh_time
from cathrepo.repo import layout
from cathrepo.repo.lock import locked
from cathrepo.repo.state import signers_at

if TYPE_CHECKING:
    from cathrepo.repo import Repo


@dataclass(frozen=True)
class KeyInfo:
    """One line of ``allowed_signers`` as ``keys list`` shows it."""

    principals: tuple[str, ...]
    fingerprint: str
    public_key: str
    revoked: str | None  # valid-before, as written
    namespaces: tuple[str, ...] | None
    comment: str

    @classmethod
    def of(cls, signer: AllowedSigner) -> KeyInfo:
        before = signer.valid_before
        return cls(signer.principals, signer.fingerprint, signer.public_key,
                   ssh_time(before) if before else None, signer.namespaces, signer.comment)

    def to_dict(self) -> dict[str, Any]:
        return {"principals": list(self.principals), "fingerprint": self.fingerprint, "public_key": self.public_key,
                "revoked": self.revoked, "namespaces": list(self.namespaces) if self.namespaces else None,
                "comment": self.comment}


@dataclass(frozen=True)
class KeyChange:
    """What ``keys add``/``keys revoke`` committed."""

    action: str
    key: KeyInfo
    commit: str


def list_keys(repo: Repo, rev: str = "HEAD") -> list[KeyInfo]:
    """Every key line of ``allowed_signers`` at ``rev`` (certificate authorities included), in file order."""
    return [KeyInfo.of(s) for s in signers_at(repo, rev)]


def _find(signers: list[AllowedSigner], ref: str) -> AllowedSigner:
    """The one key ``ref`` names: a fingerprint (``SHA256:...``, or a unique prefix of it) or a principal
    with exactly one key that is not revoked."""
    by_key = [s for s in signers if ref.startswith("SHA256:") and s.fingerprint.startswith(ref)]
    by_principal = [s for s in signers if ref in s.principals and not s.revoked]
    found = {s.fingerprint: s for s in (by_key or by_principal)}
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise InvalidInputError(f"No key in {layout.ALLOWED_SIGNERS} matches '{ref}'"
                                + (" that is not revoked already" if any(ref in s.principals for s in signers) else "")
                                + ".", hint="List them with 'cathrepo keys list'.")
    raise InvalidInputError(f"'{ref}' names {len(found)} keys: {', '.join(found)}.",
                            hint="Name the key by its fingerprint.")


def _committed_file(repo: Repo) -> Path:
    """The work tree's ``allowed_signers``, after checking it is as HEAD has it and nothing else is staged."""
    path = repo.root / layout.ALLOWED_SIGNERS
    committed = repo.git.show_file("HEAD", layout.ALLOWED_SIGNERS)
    if committed is None or not path.is_file() or path.read_bytes() != committed:
        raise InvalidInputError(f"{layout.ALLOWED_SIGNERS} has changes that are not committed.",
                                hint=f"Commit or restore them first: git checkout -- {layout.ALLOWED_SIGNERS}")
    staged = [line[3:] for line in repo.git.status_porcelain() if line[0] not in " ?"]
    if staged:
        raise InvalidInputError(f"Changes are staged ({', '.join(staged[:3])}); a key commit holds "
                                f"{layout.ALLOWED_SIGNERS} alone.", hint="Commit or unstage them first.")
    return path


def _commit(repo: Repo, path: Path, before: bytes, message: str, trailers: dict[str, str]) -> str:
    """Commit ``allowed_signers`` alone, signed; on failure the file is put back."""
    try:
        repo.git.add([layout.ALLOWED_SIGNERS])
        return repo.git.commit(message, trailers, sign_with=repo.signing_key())
    except BaseException:
        atomic_write(path, before, mode=0o644)
        repo.git.unstage([layout.ALLOWED_SIGNERS])
        raise


@locked("keys")
def add_key(repo: Repo, principal: str, public_key: str) -> KeyChange:
    """Let ``public_key`` (an OpenSSH public key line, or the path of a ``.pub`` file) sign and approve as
    ``principal``, in a signed commit.

    Raises:
        InvalidInputError: the key is listed for that principal already, or was revoked (a revoked key
            stays revoked: make a new one).
    """
    from cathrepo.provenance.allowed_signers import add_signer, find_signer, parse_allowed_signers
    from cathrepo.provenance.keys import fingerprint_of

    candidate = Path(public_key).expanduser()
    if "ssh-" not in public_key and candidate.is_file():
        public_key = candidate.read_text(encoding="utf-8").strip()
    path = _committed_file(repo)
    before = path.read_bytes()
    fingerprint = fingerprint_of(public_key)
    for signer in parse_allowed_signers(before.decode("utf-8"), source=str(path)):
        if signer.fingerprint == fingerprint and signer.revoked:
            raise InvalidInputError(f"The key {fingerprint} was revoked ({ssh_time(signer.valid_before or 0)}); "
                                    "a revoked key is not added again.", hint="Make a new key for this signer.")
    if not add_signer(path, principal, public_key):
        raise InvalidInputError(f"{principal} ({fingerprint}) is in {layout.ALLOWED_SIGNERS} already.",
                                hint="Nothing to do.")
    signers = parse_allowed_signers(path.read_text(encoding="utf-8"), source=str(path))
    added = find_signer(signers, public_key, principal=principal)
    assert added is not None
    sha = _commit(repo, path, before, f"Allow {principal} to sign ({fingerprint})",
                  {"Cathrepo-Action": "keys-add", "Cathrepo-Key": fingerprint, "Cathrepo-Principal": principal})
    return KeyChange("add", KeyInfo.of(added), sha)


@locked("keys")
def revoke_key(repo: Repo, ref: str, *, at: str | None = None, reason: str = "") -> KeyChange:
    """Revoke the key ``ref`` names (a fingerprint or a principal with one key) as of ``at`` (ssh-keygen's
    ``YYYYMMDD[HHMM[SS]]Z``, default now): its line gets ``valid-before`` and stays, in a signed commit.

    Raises:
        InvalidInputError: ``ref`` names no key, several keys, or ``at`` is unreadable or in the future.
        SigningError: the key is revoked already.
    """
    from cathrepo.provenance.allowed_signers import parse_allowed_signers, revoke_signer

    now = int(time.time())
    when = now if at is None else absolute_time(at)
    if not when or when > now:
        raise InvalidInputError(f"--at {at} is not a past time ssh-keygen reads.",
                                hint="Give YYYYMMDDHHMMSSZ (UTC), e.g. 20250131120000Z; default: now.")
    path = _committed_file(repo)
    before = path.read_bytes()
    signer = _find(parse_allowed_signers(before.decode("utf-8"), source=str(path)), ref)
    if signer.fingerprint == repo.signing_key().fingerprint:
        raise InvalidInputError(f"{signer.fingerprint} is the key this repository signs with; its revocation "
                                "commit would be signed by a revoked key.",
                                hint="Configure another signer's key (git config user.signingkey) and revoke from it.")
    if signer.revoked:
        raise SigningError(f"The key {signer.fingerprint} is revoked already.", hint="See 'cathrepo keys list'.")
    (revoked, *_) = revoke_signer(path, signer.fingerprint, when)
    message = f"Revoke {signer.principal}'s key {signer.fingerprint} as of {ssh_time(when)}"
    sha = _commit(repo, path, before, message + (f"\n\n{reason}" if reason.strip() else ""),
                  {"Cathrepo-Action": "keys-revoke", "Cathrepo-Key": signer.fingerprint,
                   "Cathrepo-Valid-Before": ssh_time(when)})
    return KeyChange("revoke", KeyInfo.of(revoked), sha)
