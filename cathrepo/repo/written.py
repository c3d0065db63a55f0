"""When each signed file of a revision was written, and who could sign in the commit that wrote it.

A signature that does not live in a commit of its own (an approval, a pack's ``pack.sig``, a proposal's
``proposal.sig``, a line of the deployment log) is checked as git checks a commit signature: against the
key's validity at the time it was made (the record's own time when it has one, else the committer time of
the commit that wrote the file), and refused when that very commit's ``allowed_signers`` had already
revoked the key, whatever time it claims (:class:`~cathrepo.provenance.allowed_signers.Written`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from cathrepo.exceptions import CathrepoError
from cathrepo.provenance.allowed_signers import Written, parse_allowed_signers
from cathrepo.repo import layout
from cathrepo.repo.state import signed_at

if TYPE_CHECKING:
    from cathrepo.provenance.allowed_signers import AllowedSigner
    from cathrepo.repo import Repo


def write_times(repo: Repo, sha: str, pathspec: str) -> dict[str, tuple[str, int]]:
    """Each file matching ``pathspec`` at ``sha`` -> (the newest commit that wrote it as it is, that
    commit's committer time), from one ``git log``."""
    out = repo.git.run(["log", "--format=%x1e%H %ct", "--diff-filter=AM", "--name-only", sha, "--", pathspec])
    found: dict[str, tuple[str, int]] = {}
    for chunk in out.split("\x1e"):
        lines = [line.strip() for line in chunk.strip().splitlines() if line.strip()]
        if not lines:
            continue
        commit, _, when = lines[0].partition(" ")
        for path in lines[1:]:
            found.setdefault(path, (commit, int(when)))
    return found


def line_commits(repo: Repo, sha: str, path: str, data: bytes) -> list[str | None]:
    """For each line of ``data`` (``path`` at ``sha``, an append-only file), the oldest commit in the
    history of ``sha`` whose ``path`` reached the end of that line: the commit that added it. One
    ``git log`` without diffs and one ``cat-file --batch-check`` of the file's sizes, so a log of thousands
    of lines is attributed in a fraction of a second (diffing each version is quadratic). A line merged
    from another branch belongs to the commit on that branch that wrote it."""
    from bisect import bisect_left
    from itertools import accumulate

    commits = repo.git.run(["log", "--reverse", "--format=%H", sha, "--", path]).split()
    sizes = repo.git.object_sizes([f"{c}:{path}" for c in commits])
    reached = list(accumulate((sizes.get(f"{c}:{path}", 0) for c in commits), max))  # ascending
    ends = accumulate(len(line) + 1 for line in data.split(b"\n")[:-1])
    return [commits[i] if (i := bisect_left(reached, end)) < len(commits) else None for end in ends]


class Writers:
    """The ``allowed_signers`` of the commits that wrote signed files, read once per commit."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._signers: dict[str, list[AllowedSigner] | None] = {}

    def prefetch(self, commits: Iterable[str]) -> None:
        """Read the ``allowed_signers`` of every commit in ``commits`` in one ``cat-file``."""
        todo = [c for c in dict.fromkeys(commits) if c not in self._signers]
        if not todo:
            return
        names = {c: f"{c}:{layout.ALLOWED_SIGNERS}" for c in todo}
        try:
            data = self.repo.git.read_objects(list(names.values()))
        except CathrepoError:  # one of them has no allowed_signers: read them one by one
            data = {}
        for commit, name in names.items():
            if name in data:
                self._signers[commit] = self._parse(data[name], commit)

    @staticmethod
    def _parse(data: bytes | None, commit: str) -> list[AllowedSigner] | None:
        try:
            text = data.decode("utf-8") if data is not None else None
            return parse_allowed_signers(text, source=f"{commit}:{layout.ALLOWED_SIGNERS}") if text else None
        except (CathrepoError, UnicodeDecodeError):
            return None

    def of(self, commit: str | None) -> Written | None:
        """``commit`` and its ``allowed_signers`` (None when there is no commit to judge by)."""
        if commit is None:
            return None
        if commit not in self._signers:
            self._signers[commit] = self._parse(self.repo.git.show_file(commit, layout.ALLOWED_SIGNERS), commit)
        return Written(commit, self._signers[commit])


class Signed:
    """The files matching a pathspec at a revision, each with when its signature was made and the commit
    that wrote it: what :func:`~cathrepo.provenance.signing.verify_payload` takes as ``at`` and ``then``."""

    def __init__(self, repo: Repo, sha: str, pathspec: str) -> None:
        self.times = write_times(repo, sha, pathspec)
        self.writers = Writers(repo)
        self.writers.prefetch(commit for commit, _ in self.times.values())

    def at(self, path: str, record: bytes) -> int | None:
        """When the signature in ``path`` over ``record`` was made: the record's ``created`` when it has
        one, else the committer time of the commit that wrote ``path``."""
        created, found = signed_at(record), self.times.get(path)
        return created if created is not None else found[1] if found is not None else None

    def then(self, path: str) -> Written | None:
        """The commit that wrote ``path`` and its ``allowed_signers`` (None for a file no commit wrote)."""
        found = self.times.get(path)
        return self.writers.of(found[0]) if found is not None else None
