"""The verbs of lines of edits and of what leaves the repository, mixed into :class:`~cathrepo.repo.Repo`:
proposals and CI, branches and merges, packs, rebasing onto a new base, git hooks, promotion, canary and
rollback, export. Each delegates to its own module, imported when called (STYLE.md §1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from cathrepo.facts.schema import EditRequest
    from cathrepo.repo import Repo
    from cathrepo.repo.branch import BranchInfo
    from cathrepo.repo.canary import CanaryReport
    from cathrepo.repo.ci import CiReport
    from cathrepo.repo.export import Exported
    from cathrepo.repo.hooks import HookState
    from cathrepo.repo.merge import MergeOutcome
    from cathrepo.repo.packs import ConsolidateOutcome
    from cathrepo.repo.promote import Deployments, DeployOutcome
    from cathrepo.repo.propose import Proposed
    from cathrepo.repo.rebase import RebaseOutcome
    from cathrepo.repo.state import Issue


def _repo(verbs: LineVerbs) -> Repo:
    """The repository these verbs are mixed into (typed for the verb functions)."""
    return cast("Repo", verbs)


class LineVerbs:
    """Mixed into :class:`~cathrepo.repo.Repo` (see the module docstring)."""

    def propose(self, requests: Sequence[EditRequest], *, method: str | None = None,
                params: Mapping[str, Any] | None = None, message: str | None = None) -> Proposed:
        """Commit ``requests`` as signed proposals without weights (:func:`cathrepo.repo.propose.propose`)."""
        from cathrepo.repo.propose import propose

        return propose(_repo(self), requests, method=method, params=params, message=message)

    def ci(self, *, base: str = "main", head: str = "HEAD", commit: bool = False, key_path: Path | None = None,
           progress: Callable[[str], None] | None = None) -> CiReport:
        """Verify, realise the pending proposals and gate the merge of ``head`` into ``base``
        (:func:`cathrepo.repo.ci.ci`)."""
        from cathrepo.repo.ci import ci

        return ci(_repo(self), base=base, head=head, commit=commit, key_path=key_path, progress=progress)

    def merge(self, branch: str, *, resolution: str | None = None, keep: Sequence[str] = (),
              strategy: str | None = None, gate: bool = True, force: bool = False,
              progress: Callable[[str], None] | None = None) -> MergeOutcome:
        """Merge ``branch`` into the checked-out one (:func:`cathrepo.repo.merge.merge`)."""
        from cathrepo.repo.merge import merge

        return merge(_repo(self), branch, resolution=resolution, keep=keep, strategy=strategy, gate=gate, force=force,
                     progress=progress)

    def consolidate(self, *, strategy: str = "cat", gate: bool = True, force: bool = False,
                    progress: Callable[[str], None] | None = None) -> ConsolidateOutcome:
        """Fold the active edits into one gated pack (:func:`cathrepo.repo.packs.consolidate`)."""
        from cathrepo.repo.packs import consolidate

        return consolidate(_repo(self), strategy=strategy, gate=gate, force=force, progress=progress)

    def rebase_onto_base(self, source: str, *, branch: str | None = None,
                         progress: Callable[[str], None] | None = None) -> RebaseOutcome:
        """Recompute every active edit on base ``source`` on a new branch (:mod:`cathrepo.repo.rebase`)."""
        from cathrepo.repo.rebase import rebase_onto_base

        return rebase_onto_base(_repo(self), source, branch=branch, progress=progress)

    def branches(self) -> list[BranchInfo]:
        from cathrepo.repo.branch import branches

        return branches(_repo(self))

    def create_branch(self, name: str, start: str = "HEAD") -> BranchInfo:
        from cathrepo.repo.branch import create_branch

        return create_branch(_repo(self), name, start)

    def checkout(self, name: str, *, create: bool = False) -> BranchInfo:
        from cathrepo.repo.branch import checkout

        return checkout(_repo(self), name, create=create)

    # --- git hooks (cathrepo.repo.hooks installs them, cathrepo.repo.hook_checks is what they run) ---------

    def hooks(self, *, install: bool = False, uninstall: bool = False, force: bool = False) -> list[HookState]:
        """cathrepo's git hooks here: as they are, after installing them (``force``: replacing hooks that
        are not cathrepo's), or after uninstalling them."""
        from cathrepo.repo import hooks as scripts

        if install:
            return scripts.install(_repo(self), force=force)
        return scripts.uninstall(_repo(self)) if uninstall else scripts.states(_repo(self))

    def check_staged(self) -> list[Issue]:
        """What the pre-commit hook finds wrong with the staged index (empty: it may be committed)."""
        from cathrepo.repo.hook_checks import staged_issues

        return staged_issues(_repo(self))

    def check_push(self, lines: str) -> list[Issue]:
        """What the pre-push hook finds wrong with a push, from the lines git writes to its stdin."""
        from cathrepo.repo.hook_checks import parse_push_lines, pushed_issues
        from cathrepo.repo.verified import Verified

        return pushed_issues(_repo(self), parse_push_lines(lines), Verified.of(_repo(self).root))

    def promote(self, rev: str, env: str, reason: str = "", *, gate: bool = True, force: bool = False,
                progress: Callable[[str], None] | None = None) -> DeployOutcome:
        """Record that ``env`` serves ``rev`` from now on (:func:`cathrepo.repo.promote.promote`)."""
        from cathrepo.repo.promote import promote

        return promote(_repo(self), rev, env, reason, gate=gate, force=force, progress=progress)

    def canary(self, prompts_file: Path, *, max_kl: float = 0.05, max_changed: float = 0.1,
               auto_rollback: bool = False, progress: Callable[[str], None] | None = None) -> CanaryReport:
        """Compare canary with production on real prompts (:func:`cathrepo.repo.canary.canary`)."""
        from cathrepo.repo.canary import canary

        return canary(_repo(self), prompts_file, max_kl=max_kl, max_changed=max_changed, auto_rollback=auto_rollback,
                      progress=progress)

    def rollback(self, env: str, reason: str = "") -> DeployOutcome:
        """Return ``env`` to what it served before its latest promotion (:func:`cathrepo.repo.promote.rollback`)."""
        from cathrepo.repo.promote import rollback

        return rollback(_repo(self), env, reason)

    def deployments(self, env: str | None = None, rev: str = "HEAD") -> Deployments:
        """The verified deployment log at ``rev`` and what each environment serves."""
        from cathrepo.repo.promote import deployments

        return deployments(_repo(self), env, rev)

    def export(self, out: Path, fmt: str = "peft", *, rev: str = "HEAD", rank: int | None = None,
               force: bool = False) -> Exported:
        """Write ``rev``'s active set as a PEFT adapter or a merged model (:mod:`cathrepo.repo.export`)."""
        from cathrepo.repo.export import export

        return export(_repo(self), out, fmt=fmt, rev=rev, rank=rank, force=force)
