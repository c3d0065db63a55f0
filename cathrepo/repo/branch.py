"""``cathrepo branch`` and ``cathrepo checkout``: lines of edits, as git branches.

A branch is a git branch; what it holds is its active set. Listing shows each branch's active edits,
so a reviewer sees at a glance what merging one would bring. Switching refuses a work tree with
uncommitted changes (git would carry them over silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cathrepo.exceptions import InvalidInputError
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.repo import Repo

_NAME_HINT = "Branch names follow git's rules (git check-ref-format --branch NAME)."


@dataclass(frozen=True)
class BranchInfo:
    name: str
    commit: str
    current: bool
    active: int


def branches(repo: Repo) -> list[BranchInfo]:
    """Every local branch with its tip and the size of its active set."""
    current = repo.git.current_branch()
    out = []
    for line in repo.git.run(["for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads"]).splitlines():
        name, _, sha = line.strip().rpartition(" ")
        if name:
            out.append(BranchInfo(name, sha, name == current, len(repo.stack(sha).active)))
    return out


def require_clean(repo: Repo, doing: str) -> None:
    """Refuse a work tree with uncommitted changes to tracked files (git would carry them along silently)."""
    changed = [line for line in repo.git.run(["status", "--porcelain", "--untracked-files=no"]).splitlines() if line]
    if changed:
        raise InvalidInputError(f"The work tree has uncommitted changes ({changed[0][3:]}).",
                                hint=f"Commit or stash them before {doing}.")


def _check_name(repo: Repo, name: str) -> None:
    from cathrepo.exceptions import GitError

    try:
        repo.git.run(["check-ref-format", "--branch", name])
    except GitError:
        raise InvalidInputError(f"'{name}' is not a valid branch name.", hint=_NAME_HINT) from None


def sync_weights(repo: Repo) -> tuple[int, int]:
    """The work tree's weight files as HEAD's pointers name them (after git switched or merged lines):
    missing ones restored from the DVC cache, those of edits HEAD does not hold removed (their bytes stay
    in the cache). Returns (restored, removed)."""
    from cathrepo.repo import layout

    pointers = [p for p in repo.git.list_files("HEAD", layout.EDITS) if p.endswith("/" + layout.WEIGHTS_POINTER)]
    return repo.storage.sync_workspace(pointers, stale=f"{layout.EDITS}/*/{layout.WEIGHTS}")


@locked("branch")
def create_branch(repo: Repo, name: str, start: str = "HEAD") -> BranchInfo:
    """A new branch at ``start`` (not checked out)."""
    _check_name(repo, name)
    if any(b.name == name for b in branches(repo)):
        raise InvalidInputError(f"Branch '{name}' already exists.", hint="Pick another name, or 'cathrepo checkout' it.")
    sha = repo.git.rev_parse(start)
    repo.git.run(["branch", name, sha])
    return BranchInfo(name, sha, False, len(repo.stack(sha).active))


@locked("checkout")
def checkout(repo: Repo, name: str, *, create: bool = False) -> BranchInfo:
    """Switch the work tree to branch ``name`` (with ``create``, a new branch at HEAD first)."""
    require_clean(repo, "switching branches")
    if create:
        create_branch(repo, name)
    elif not any(b.name == name for b in branches(repo)):
        raise InvalidInputError(f"No branch '{name}'.", hint="List branches with 'cathrepo branch'; -b creates one.")
    repo.git.run(["checkout", "-q", name])
    sync_weights(repo)
    sha = repo.git.rev_parse("HEAD")
    return BranchInfo(name, sha, True, len(repo.stack(sha).active))
