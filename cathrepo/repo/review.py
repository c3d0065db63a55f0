"""The verbs of review, mixed into :class:`~cathrepo.repo.Repo`: approvals of edits and the keys that may
sign and approve. Each delegates to its own module, imported when called (STYLE.md §1)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from cathrepo.repo import Repo
    from cathrepo.repo.approve import ApprovalStatus, ApproveOutcome
    from cathrepo.repo.keys import KeyChange, KeyInfo


def _repo(verbs: ReviewVerbs) -> Repo:
    return cast("Repo", verbs)


class ReviewVerbs:
    """Mixed into :class:`~cathrepo.repo.Repo` (see the module docstring)."""

    def approve(self, ref: str, *, key_path: Path | None = None, note: str = "") -> ApproveOutcome:
        """Approve edit ``ref`` in a signed commit (:func:`cathrepo.repo.approve.approve`)."""
        from cathrepo.repo.approve import approve

        return approve(_repo(self), ref, key_path=key_path, note=note)

    def approvals(self, refs: Sequence[str], rev: str = "HEAD") -> list[ApprovalStatus]:
        """Each edit's tier, the approvals it needs and those that count at ``rev``."""
        from cathrepo.repo.approve import statuses

        repo = _repo(self)
        return statuses(repo, rev, [repo.resolve_edit(r, rev) for r in refs])

    def keys(self, rev: str = "HEAD") -> list[KeyInfo]:
        """The lines of ``allowed_signers`` at ``rev``, revoked ones included."""
        from cathrepo.repo.keys import list_keys

        return list_keys(_repo(self), rev)

    def add_key(self, principal: str, public_key: str) -> KeyChange:
        """Let ``public_key`` sign as ``principal`` (:func:`cathrepo.repo.keys.add_key`)."""
        from cathrepo.repo.keys import add_key

        return add_key(_repo(self), principal, public_key)

    def revoke_key(self, ref: str, *, at: str | None = None, reason: str = "") -> KeyChange:
        """Revoke a key as of ``at`` (default now), keeping its line (:func:`cathrepo.repo.keys.revoke_key`)."""
        from cathrepo.repo.keys import revoke_key

        return revoke_key(_repo(self), ref, at=at, reason=reason)
