"""``cathrepo verify [REV]``: every commit signature, every edit signature, every file hash.

Commits are checked by git itself (``git verify-commit`` semantics against ``allowed_signers``). Each
edit's ``edit.json`` must hash to its directory name (the edit id), carry a valid ``edit.sig`` by an
allowed signer, and name the sha256 of every other file of the edit; the weights are read from the DVC
cache (fetched from the remote if needed) through the pointer committed at that revision. An issue
names the exact file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cathrepo.exceptions import CathrepoError, VerificationError
from cathrepo.repo import layout

if TYPE_CHECKING:
    from cathrepo.provenance.allowed_signers import AllowedSigner
    from cathrepo.provenance.manifest import EditRecord
    from cathrepo.repo import Repo


@dataclass(frozen=True)
class Issue:
    """One thing that does not verify: the file (or commit) and what is wrong with it."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


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


def _signers(repo: Repo, rev: str) -> list[AllowedSigner]:
    from cathrepo.provenance.allowed_signers import parse_allowed_signers

    data = repo.git.show_file(rev, layout.ALLOWED_SIGNERS)
    if data is None:
        raise VerificationError(f"{layout.ALLOWED_SIGNERS} is missing at {rev}.")
    return parse_allowed_signers(data.decode("utf-8"), source=f"{rev}:{layout.ALLOWED_SIGNERS}")


def weights_bytes(repo: Repo, rev: str, edit_id: str) -> tuple[Path, bytes]:
    """The cached weight file of an edit at ``rev`` (through its committed DVC pointer) and its bytes."""
    pointer = repo.git.show_file(rev, layout.edit_path(edit_id, layout.WEIGHTS_POINTER))
    if pointer is None:
        raise VerificationError(f"{layout.edit_path(edit_id, layout.WEIGHTS_POINTER)} is missing at {rev}.")
    md5, _size, _rel = repo.storage.read_pointer(pointer)
    path = repo.storage.fetch_object(md5)
    return path, path.read_bytes()


def check_edit(repo: Repo, rev: str, edit_id: str, signers: list[AllowedSigner] | None = None,
               *, worktree: bool = False) -> tuple[EditRecord | None, list[Issue]]:
    """Verify one edit at ``rev``; returns its record (None if unreadable) and the issues found."""
    from cathrepo.provenance.manifest import EditRecord, sha256_bytes
    from cathrepo.provenance.manifest import edit_id as id_of
    from cathrepo.provenance.signing import verify_payload

    issues: list[Issue] = []
    record_path = layout.edit_path(edit_id, layout.RECORD)
    raw = repo.git.show_file(rev, record_path)
    if raw is None:
        return None, [Issue(record_path, f"missing at {rev}")]
    if id_of(raw) != edit_id:
        issues.append(Issue(record_path, f"hashes to {id_of(raw)}, not to its edit id {edit_id} (modified)"))
    sig_path = layout.edit_path(edit_id, layout.SIGNATURE)
    sig = repo.git.show_file(rev, sig_path)
    try:
        if sig is None:
            raise VerificationError("missing")
        envelope = json.loads(sig.decode("utf-8"))
        verify_payload(envelope, raw, signers if signers is not None else _signers(repo, rev), what=sig_path)
    except (VerificationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        issues.append(Issue(sig_path, getattr(exc, "message", str(exc))))
    try:
        record = EditRecord.from_bytes(raw, what=record_path)
    except VerificationError as exc:
        return None, [*issues, Issue(record_path, exc.message)]
    for name, expected in sorted(record.files.items()):
        path = layout.edit_path(edit_id, name)
        try:
            if name == layout.WEIGHTS:
                _, data = weights_bytes(repo, rev, edit_id)
            else:
                data = repo.git.show_file(rev, path)
                if data is None:
                    raise VerificationError("missing")
        except CathrepoError as exc:
            issues.append(Issue(path, exc.message))
            continue
        if sha256_bytes(data) != expected:
            issues.append(Issue(path, f"sha256 {sha256_bytes(data)[:12]}… differs from the record's {expected[:12]}…"))
        if worktree and name == layout.WEIGHTS:
            local = repo.root / path
            if local.is_file() and _sha256_file(local) != expected:
                issues.append(Issue(path, "the copy in the work tree differs from the committed weights (modified)"))
    return record, issues


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(repo: Repo, rev: str = "HEAD") -> VerifyReport:
    """Check every commit reachable from ``rev`` and every edit present at ``rev``."""
    from cathrepo.provenance.manifest import EDIT_FILES

    commit = repo.git.rev_parse(rev)
    report = VerifyReport(rev=rev, commit=commit)
    for sha in repo.git.rev_list(commit):
        report.commits += 1
        check = repo.git.verify_commit(sha)
        if not check.ok:
            report.issues.append(Issue(f"commit {sha[:12]}", f"signature does not verify: {check.detail}"))
    signers = _signers(repo, commit)
    head = repo.git.head()
    stack = repo.stack(commit)
    present = set(repo.edit_ids(commit))
    for missing in [e for e in stack.active if e not in present]:
        report.issues.append(Issue(layout.STACK, f"names edit {missing}, which does not exist"))
    for eid in sorted(present):
        _, issues = check_edit(repo, commit, eid, signers, worktree=commit == head)
        report.edits += 1
        report.files += 1 + len(EDIT_FILES)
        report.issues.extend(issues)
    return report
