"""What this clone has already verified, kept in ``.git/cathrepo/verified`` so no command checks it twice.

A commit id names the commit's bytes, and the git tree id of ``edits/<id>/`` names every file git holds
for that edit (record, signature, adapter config, probes, data, weights pointer). Once a commit's
signature, or an edit's id, signature and hashes, verified against an ``allowed_signers``, the same ids
verify again against the same ``allowed_signers``: ``verify`` and ``materialize`` check only what is
new. One line per verdict, only good ones::

    commit <commit id> <sha256 of the allowed signers file git checks commits against>
    edit <tree id of edits/<id>/> <sha256 of allowed_signers at the revision> <the weights' sha256>

What git does not content-address is checked every time: an edit's weights are read from the DVC cache
and hashed against the sha256 its line keeps (from the record that verified). The file is an index,
never a source of truth: a missing or damaged one is rebuilt by verifying again, a line that does not
parse is ignored, and ``cathrepo verify --full`` ignores it altogether. Two commands saving at once may
drop each other's new lines; what is dropped is verified again next time.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from cathrepo.files import atomic_write, sha256_bytes
from cathrepo.repo.lock import git_dir

log = logging.getLogger(__name__)

NAME = "cathrepo/verified"
_COMMIT = re.compile(r"commit ([0-9a-f]{40}|[0-9a-f]{64}) ([0-9a-f]{32})")
_EDIT = re.compile(r"edit ([0-9a-f]{40}|[0-9a-f]{64}) ([0-9a-f]{32}) ([0-9a-f]{64})")


def signers_key(allowed_signers: bytes | None) -> str:
    """The key a set of allowed signers is known by in the index (None: nothing can be trusted)."""
    return "none" if allowed_signers is None else sha256_bytes(allowed_signers)[:32]


class Verified:
    """The index of verified commits and edits of one clone (see the module docstring)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._commits: set[tuple[str, str]] = set()
        self._edits: dict[tuple[str, str], str] = {}
        self._new: list[str] = []
        if path is not None and path.is_file():
            try:
                for line in path.read_text(encoding="ascii").splitlines():
                    self._take(line)
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("Ignoring the verified index %s: %s", path, exc)

    @classmethod
    def of(cls, root: Path, *, full: bool = False) -> Verified:
        """The index of the repository at ``root``; with ``full`` an empty one that saves nothing."""
        return cls(None if full else git_dir(root) / NAME)

    def _take(self, line: str) -> None:
        """Read one line; one that is not exactly a verdict (a line cut short by a crash) is ignored."""
        commit, edit = _COMMIT.fullmatch(line), _EDIT.fullmatch(line)
        if commit:
            self._commits.add((commit[1], commit[2]))
        elif edit:
            self._edits[(edit[1], edit[2])] = edit[3]

    def has_commit(self, sha: str, signers: str) -> bool:
        return (sha, signers) in self._commits

    def edit_weights(self, tree: str, signers: str) -> str | None:
        """The weights' sha256 of the edit whose directory is the git tree ``tree``, if it verified."""
        return self._edits.get((tree, signers))

    def add_commit(self, sha: str, signers: str) -> None:
        if signers != "none" and not self.has_commit(sha, signers):
            self._take(line := f"commit {sha} {signers}")
            self._new.append(line)

    def add_edit(self, tree: str, signers: str, weights_sha256: str) -> None:
        if signers != "none" and self.edit_weights(tree, signers) != weights_sha256:
            self._take(line := f"edit {tree} {signers} {weights_sha256}")
            self._new.append(line)

    def save(self) -> None:
        """Add the new verdicts to the file (a failure to write only costs verifying again)."""
        if self.path is None or not self._new:
            return
        try:
            old = self.path.read_bytes() if self.path.is_file() else b""
            atomic_write(self.path, old + "".join(f"{line}\n" for line in self._new).encode("ascii"),
                         make_parents=True)
            self._new.clear()
        except OSError as exc:
            log.warning("Could not save the verified index %s: %s", self.path, exc)
