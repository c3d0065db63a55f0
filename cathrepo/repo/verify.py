"""``cathrepo verify [REV]``: every commit signature, every edit signature, every file hash.

Commits are checked by git itself (``git verify-commit`` semantics against ``allowed_signers``). Each
edit's ``edit.json`` must hash to its directory name (the edit id), carry a valid ``edit.sig`` by an
allowed signer, and name the sha256 of every other file of the edit; the weights are read from the DVC
cache (fetched from the remote if needed) through the pointer committed at that revision. An issue
names the exact file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cathrepo.repo import layout
from cathrepo.repo.state import Issue, check_edit, signers_at

if TYPE_CHECKING:
    from cathrepo.repo import Repo


@dataclass
class VerifyReport:
    """What ``verify`` checked and found."""

    rev: str
    commit: str
    commits: int = 0
    edits: int = 0
    files: int = 0
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict[str, object]:
        return {"rev": self.rev, "commit": self.commit, "ok": self.ok, "commits": self.commits,
                "edits": self.edits, "files": self.files, "issues": [str(i) for i in self.issues]}


def verify(repo: Repo, rev: str = "HEAD") -> VerifyReport:
    """Check every commit reachable from ``rev`` and every edit present at ``rev``."""
    commit = repo.git.rev_parse(rev)
    report = VerifyReport(rev=rev, commit=commit)
    for sha, check in repo.git.verify_commits(repo.git.rev_list(commit)).items():
        report.commits += 1
        if not check.ok:
            report.issues.append(Issue(f"commit {sha[:12]}", f"signature does not verify: {check.detail}"))
    signers = signers_at(repo, commit)
    head = repo.git.head()
    stack = repo.stack(commit)
    tree = repo.git.read_files(commit, layout.EDITS)  # every edit's files, read at once
    present = {path.split("/")[1] for path in tree if path.endswith("/" + layout.RECORD)}
    for missing in [e for e in stack.active if e not in present]:
        report.issues.append(Issue(layout.STACK, f"names edit {missing}, which does not exist"))
    for eid in sorted(present):
        issues = check_edit(repo, commit, eid, signers, worktree=commit == head, tree=tree).issues
        report.edits += 1
        report.files += 1 + len(layout.EDIT_FILES)
        report.issues.extend(issues)
    return report
