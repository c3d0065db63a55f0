"""Approvals: a reviewer's signature over an edit record (``edits/<id>/approvals/<key>.sig``).

Stage: provenance. An approval is an envelope of :mod:`cathrepo.provenance.signing` over the exact bytes
of ``edit.json`` in its own namespace, ``cathrepo-approval``, so it can be neither replayed as the edit's
own signature (``cathrepo-edit``) or a commit signature (``git``), nor moved to another edit (the payload
hash would differ). One approval per key, named after the key's fingerprint. It counts when:

1. its signature holds over this edit's record, by a key that ``allowed_signers`` lists;
2. that key was valid when the approval was made (the time of the commit that wrote the file, as git
   checks a commit signature at its committer time): a revoked key's approvals from before its
   revocation still count, later ones do not;
3. the key was not already revoked in the ``allowed_signers`` of that very commit (an approval made on
   top of the revocation, whatever date its commit claims);
4. it is not the author's: not by the key that signed ``edit.sig``, nor by its principal, nor by a
   principal equal to the record's ``author``. Approving is a second pair of eyes.

Approvals by one principal count once, whatever number of keys it holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cathrepo.exceptions import VerificationError
from cathrepo.files import sha256_bytes
from cathrepo.provenance.allowed_signers import AllowedSigner, Written, ssh_time
from cathrepo.provenance.keys import SigningKey
from cathrepo.provenance.signing import sign_payload, verify_signatures

NAMESPACE = "cathrepo-approval"
DIRECTORY = "approvals"
SUFFIX = ".sig"


def approval_name(fingerprint: str) -> str:
    """The file name of the approval by the key with ``fingerprint`` (``SHA256:<base64>``): the base64
    made safe for file names (``+`` → ``-``, ``/`` → ``_``), so each key approves an edit once."""
    digest = fingerprint.removeprefix("SHA256:")
    return digest.replace("+", "-").replace("/", "_") + SUFFIX


def sign_approval(key: SigningKey, record_bytes: bytes) -> dict[str, Any]:
    """The approval envelope of ``key`` over an edit's ``edit.json`` bytes."""
    return sign_payload(key, record_bytes, namespace=NAMESPACE)


@dataclass(frozen=True)
class Author:
    """Who made an edit, as far as approvals care: the principal and fingerprint of its ``edit.sig``
    signature and the record's ``author`` field."""

    principal: str | None
    fingerprint: str | None
    name: str | None = None

    @classmethod
    def of(cls, envelope: Mapping[str, Any] | None, record_author: str | None) -> Author:
        first = (envelope or {}).get("signatures") or [{}]
        entry = first[0] if isinstance(first[0], Mapping) else {}
        return cls(entry.get("principal"), entry.get("fingerprint"), record_author)

    def is_(self, principal: str, fingerprint: str) -> bool:
        return fingerprint == self.fingerprint or principal in (self.principal, self.name)


@dataclass(frozen=True)
class Approval:
    """One approval that verified: who, with which key, in which commit, when (seconds since the epoch)."""

    principal: str
    fingerprint: str
    path: str
    commit: str | None = None
    time: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "fingerprint": self.fingerprint, "path": self.path,
                "commit": self.commit, "time": ssh_time(self.time) if self.time is not None else None}


def check_approval(envelope: Any, record_bytes: bytes, signers: Sequence[AllowedSigner], *, path: str,
                   author: Author, at: int | None, commit: str | None = None,
                   signers_then: Sequence[AllowedSigner] | None = None) -> Approval:
    """Verify one approval (see the module docstring) and return it.

    Args:
        envelope: the parsed ``<key>.sig``; record_bytes: the edit's ``edit.json``.
        signers: ``allowed_signers`` of the revision being checked (revocations included).
        at: when the approval was made (its commit's committer time); commit: that commit.
        signers_then: ``allowed_signers`` of that commit, for rule 3.

    Raises:
        VerificationError: naming ``path`` and the reason.
    """
    if isinstance(envelope, dict) and len(envelope.get("signatures") or []) > 1:
        raise VerificationError(f"{path}: an approval holds one signature, this one holds "
                                f"{len(envelope['signatures'])}.", hint="Restore the file from git.")
    if isinstance(envelope, dict) and envelope.get("payload_sha256") not in (None, sha256_bytes(record_bytes)):
        raise VerificationError(f"{path}: the approval was made over another record (sha256 "
                                f"{str(envelope['payload_sha256'])[:12]}…), not this edit's edit.json "
                                f"({sha256_bytes(record_bytes)[:12]}…).",
                                hint="An approval holds for the exact record it signed; approve this edit anew.")
    then = Written(commit, list(signers_then)) if signers_then is not None else None
    (principal,) = verify_signatures(envelope, record_bytes, list(signers), namespace=NAMESPACE, what=path, at=at,
                                     then=then)
    fingerprint = envelope["signatures"][0]["fingerprint"]
    if path.rsplit("/", 1)[-1] != approval_name(fingerprint):
        raise VerificationError(f"{path}: the approval is by {principal} ({fingerprint}), not by the key its "
                                "file name says.", hint="Each key approves under its own name; restore the file.")
    if author.is_(principal, fingerprint):
        raise VerificationError(f"{path}: {principal} approved their own edit, which does not count.",
                                hint="Someone else in allowed_signers approves it: cathrepo approve EDIT.")
    return Approval(principal, fingerprint, path, commit, at)


def approvers(approvals: Sequence[Approval]) -> list[str]:
    """The distinct principals of ``approvals``, in order (one principal counts once)."""
    return list(dict.fromkeys(a.principal for a in approvals))

