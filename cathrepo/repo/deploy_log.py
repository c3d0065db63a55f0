"""Reading the deployment log (``deployments.jsonl``) at a revision, for ``promote``, ``rollback``,
``deployments`` and ``verify``.

The file's format and signatures are :mod:`cathrepo.provenance.deployments`; here it is read from git
and checked against what the repository says at that revision: its ``allowed_signers`` (each line's key
valid at the entry's time, and not already revoked in the commit that added the line), its history
(every commit an entry names must be in it) and the history of the file itself, which may only grow
(each commit that changed it kept every line that was there: a cut line is caught even at the end,
where no later line's hash vouches for it).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from cathrepo.exceptions import CathrepoError
from cathrepo.provenance.deployments import LogCheck, check_log
from cathrepo.repo import layout
from cathrepo.repo.state import Issue, signers_at
from cathrepo.repo.written import Writers, line_commits

if TYPE_CHECKING:
    from cathrepo.provenance.allowed_signers import Written
    from cathrepo.repo import Repo


def read_log(repo: Repo, sha: str, *, known: Collection[str] | None = None) -> tuple[bytes, LogCheck]:
    """The log committed at ``sha`` (a full commit id) and what checking it found; an absent log is empty.

    Args:
        known: the commits reachable from ``sha`` when the caller has them (else they are listed).

    Raises:
        VerificationError, ConfigError: the ``allowed_signers`` at ``sha`` is missing or malformed.
    """
    data = repo.git.show_file(sha, layout.DEPLOYMENTS) or b""
    if not data:
        return data, LogCheck()
    history = set(known) if known is not None else set(repo.git.rev_list(sha))
    added = dict(zip(data.split(b"\n"), line_commits(repo, sha, layout.DEPLOYMENTS, data), strict=False))
    writers = Writers(repo)
    writers.prefetch(c for c in added.values() if c is not None)

    def written(line: bytes) -> Written | None:
        return writers.of(added.get(line))

    return data, check_log(data, signers_at(repo, sha), known=history.__contains__, written=written)


def line_issues(check: LogCheck) -> list[Issue]:
    """``check``'s problems as :class:`Issue` objects naming the line."""
    return [Issue(f"{layout.DEPLOYMENTS} line {number}", problem) for number, problem in check.issues]


def append_only_issues(repo: Repo, sha: str) -> list[Issue]:
    """Each commit on the first-parent history of ``sha`` that changed the log must have kept every line
    it had; a commit that removed or changed one is named with the line."""
    commits = repo.git.run(["log", "--first-parent", "--format=%H", sha, "--", layout.DEPLOYMENTS]).split()
    versions = [repo.git.show_file(c, layout.DEPLOYMENTS) or b"" for c in commits]  # newest first
    issues = []
    for commit, newer, older in zip(commits, versions, versions[1:], strict=False):
        if not newer.startswith(older):
            old_lines, new_lines = older.split(b"\n"), newer.split(b"\n")
            number = next(i for i, line in enumerate(old_lines, start=1)
                          if i > len(new_lines) or new_lines[i - 1] != line)
            issues.append(Issue(f"{layout.DEPLOYMENTS} line {number}",
                                f"commit {commit[:12]} changed or removed it (the log is append-only)"))
    return issues


def log_issues(repo: Repo, sha: str, known: Collection[str]) -> tuple[int, list[Issue]]:
    """(entries, issues) of the log at ``sha`` for ``cathrepo verify``: the lines, the file's history, and
    at HEAD the work tree's copy. ``known``: every commit reachable from ``sha``."""
    try:
        data, check = read_log(repo, sha, known=known)
    except CathrepoError as exc:
        return 0, [Issue(layout.DEPLOYMENTS, f"cannot be checked: {exc.message}")]
    issues = [*line_issues(check), *append_only_issues(repo, sha)]
    local = repo.root / layout.DEPLOYMENTS
    if sha == repo.git.head() and (local.exists() or data) and (local.read_bytes() if local.exists() else b"") != data:
        issues.append(Issue(layout.DEPLOYMENTS, "the copy in the work tree differs from the committed log "
                                                "(restore it: git checkout -- deployments.jsonl)"))
    return len(check.entries), issues
