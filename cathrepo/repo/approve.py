"""``cathrepo approve EDIT``: a reviewer's signed approval of an edit, and the check ``merge``, ``promote``
and ``ci`` make that every edit has the approvals its risk tier needs.

An edit's tier is the higher of its record's ``risk`` and the tiers ``[risk]`` of ``cathrepo.toml`` gives
its topics; ``[approvals]`` says how many approvers each tier needs (by default a high-risk edit needs
one). ``approve`` writes ``edits/<id>/approvals/<key>.sig`` (:mod:`cathrepo.provenance.approvals`) and
commits it alone, signed by the approver's key. What counts is judged at a revision: the approval files
it holds, each at the time of the commit that wrote it, against that revision's ``allowed_signers``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import (
    ApprovalRequiredError,
    InvalidInputError,
    SigningError,
    VerificationError,
)
from cathrepo.provenance.approvals import (
    DIRECTORY,
    Approval,
    Author,
    approval_name,
    approvers,
    check_approval,
    sign_approval,
)
from cathrepo.repo import layout
from cathrepo.repo.lock import locked
from cathrepo.repo.state import Issue, signers_at
from cathrepo.repo.written import Writers, write_times

if TYPE_CHECKING:
    from cathrepo.config import RepoConfig
    from cathrepo.repo import Repo

#: Every approval file, as a git pathspec.
PATHSPEC = f"{layout.EDITS}/*/{DIRECTORY}/*.sig"


@dataclass(frozen=True)
class ApprovalStatus:
    """One edit at a revision: its tier, the approvals it needs, those that count, and the approval files
    that do not (with why)."""

    edit_id: str
    summary: str
    tier: str
    required: int
    approvals: tuple[Approval, ...] = ()
    issues: tuple[str, ...] = ()

    @property
    def approvers(self) -> list[str]:
        return approvers(self.approvals)

    @property
    def ok(self) -> bool:
        return len(self.approvers) >= self.required

    def line(self) -> str:
        """``3f1c… (risk high): 0 of 1 approval(s)``."""
        names = f" ({', '.join(self.approvers)})" if self.approvers else ""
        return f"{self.edit_id} (risk {self.tier}): {len(self.approvers)} of {self.required} approval(s){names}"

    def to_dict(self) -> dict[str, Any]:
        return {"edit": self.edit_id, "summary": self.summary, "tier": self.tier, "required": self.required,
                "approvers": self.approvers, "ok": self.ok, "approvals": [a.to_dict() for a in self.approvals],
                "issues": list(self.issues)}


@dataclass(frozen=True)
class ApproveOutcome:
    """What ``approve`` did: the approval and the commit that holds it, and the edit's status after it."""

    approval: Approval
    commit: str
    status: ApprovalStatus


def approval_times(repo: Repo, sha: str) -> dict[str, tuple[str, int]]:
    """Each approval file at ``sha`` -> (the newest commit that wrote it as it is, its committer time)."""
    return write_times(repo, sha, PATHSPEC)


class _Reader:
    """The approvals of a revision, read at once: its listing of ``edits/``, its signers, when each
    approval file was written, and the signers of each commit that wrote one."""

    def __init__(self, repo: Repo, sha: str, listing: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.repo, self.sha = repo, sha
        self.listing = listing if listing is not None else repo.git.list_tree(sha, layout.EDITS)
        self.files: dict[str, list[str]] = {}
        for path, (kind, _) in self.listing.items():
            parts = path.split("/")
            if kind == "blob" and len(parts) == 4 and parts[2] == DIRECTORY:
                self.files.setdefault(parts[1], []).append(path)
        self.signers = signers_at(repo, sha)
        self.times = approval_times(repo, sha) if self.files else {}
        self.writers = Writers(repo)
        self.writers.prefetch(commit for commit, _ in self.times.values())
        self.blobs: dict[str, bytes] = {}

    def prefetch(self, edit_ids: Sequence[str]) -> None:
        """Read the record, signature and approvals of every edit in ``edit_ids`` in one ``cat-file``."""
        paths = [p for eid in edit_ids for p in (layout.edit_path(eid, layout.RECORD),
                                                 layout.edit_path(eid, layout.SIGNATURE), *self.files.get(eid, []))]
        oids = {p: self.listing[p][1] for p in paths if p in self.listing and p not in self.blobs}
        data = self.repo.git.read_objects(list(oids.values()))
        self.blobs.update({p: data[oid] for p, oid in oids.items()})

    def check(self, edit_id: str, record: bytes, author: Author) -> tuple[list[Approval], list[Issue]]:
        """The approvals of one edit that count, and an issue for each approval file that does not."""
        self.prefetch([edit_id])
        blobs = self.blobs
        good: list[Approval] = []
        issues: list[Issue] = []
        for path in sorted(self.files.get(edit_id, [])):
            commit, when = self.times.get(path, (None, None))
            try:
                envelope = json.loads(blobs[path].decode("utf-8"))
                then = self.writers.of(commit)
                good.append(check_approval(envelope, record, self.signers, path=path, author=author, at=when,
                                           commit=commit, signers_then=then.signers if then is not None else None))
            except (json.JSONDecodeError, UnicodeDecodeError):
                issues.append(Issue(path, "is not a JSON signature envelope"))
            except VerificationError as exc:
                issues.append(Issue(path, exc.message.removeprefix(f"{path}: ").removeprefix(f"{path} ")))
        return good, issues

    def edit(self, edit_id: str) -> tuple[bytes, Any, Author] | None:
        """An edit's record bytes, parsed record and author (None if it has no record here)."""
        from cathrepo.provenance.manifest import EditRecord

        record_path, sig_path = layout.edit_path(edit_id, layout.RECORD), layout.edit_path(edit_id, layout.SIGNATURE)
        self.prefetch([edit_id])
        blobs = self.blobs
        if record_path not in blobs:
            return None
        try:
            envelope = json.loads(blobs[sig_path]) if sig_path in blobs else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            envelope = None
        record = EditRecord.from_bytes(blobs[record_path], what=record_path)
        return blobs[record_path], record, Author.of(envelope, record.author)


def approval_issues(repo: Repo, sha: str, listing: Mapping[str, tuple[str, str]], *,
                    edit_ids: Collection[str] | None = None) -> tuple[int, list[Issue]]:
    """``verify``'s check of every approval file at ``sha`` (of the edits ``edit_ids`` when given): how many
    there are, and each that does not hold (a bad signature, another record, a key not listed or revoked
    when it approved, the author's own)."""
    reader = _Reader(repo, sha, listing)
    if edit_ids is not None:
        reader.files = {eid: paths for eid, paths in reader.files.items() if eid in edit_ids}
    issues: list[Issue] = []
    count = 0
    reader.prefetch(sorted(reader.files))
    for edit_id, paths in sorted(reader.files.items()):
        count += len(paths)
        edit = reader.edit(edit_id)
        if edit is None:
            issues += [Issue(p, f"approves edit {edit_id}, which has no record") for p in paths]
            continue
        issues += reader.check(edit_id, edit[0], edit[2])[1]
    return count, issues


def statuses(repo: Repo, rev: str, edit_ids: Sequence[str], *, config: RepoConfig | None = None) -> list[ApprovalStatus]:
    """Each edit's approval status at ``rev`` under ``config`` (default: ``rev``'s own ``cathrepo.toml``)."""
    sha = repo.git.rev_parse(rev)
    config = config or repo.config_at(sha)
    reader = _Reader(repo, sha)
    reader.prefetch(edit_ids)
    out = []
    for edit_id in edit_ids:
        edit = reader.edit(edit_id)
        if edit is None:
            raise VerificationError(f"Edit {edit_id} has no record at {rev}.")
        raw, record, author = edit
        tier = config.tier(record.risk, record.topics)
        approvals, issues = reader.check(edit_id, raw, author)
        out.append(ApprovalStatus(edit_id, record.summary, tier, config.approvals.required(tier), tuple(approvals),
                                  tuple(str(i) for i in issues)))
    return out


def require_approvals(repo: Repo, rev: str, edit_ids: Sequence[str], *, config: RepoConfig, doing: str,
                      where: str = "", then: str = "then run this again") -> list[ApprovalStatus]:
    """The status of each edit, after checking each has the approvals its tier needs.

    Raises:
        ApprovalRequiredError: naming every edit short of approvals, its tier, what it has and needs, and
            the command that approves it (``where``: the branch to run it on).
    """
    found = statuses(repo, rev, edit_ids, config=config)
    missing = [s for s in found if not s.ok]
    if missing:
        lines = "; ".join(f"edit {s.line()}" for s in missing)
        on = f" on '{where}'" if where else ""
        raise ApprovalRequiredError(
            f"{doing} needs approvals: {lines}. Nothing was committed.", missing=missing,
            hint=f"An approver in allowed_signers other than the author runs 'cathrepo approve {missing[0].edit_id}'"
                 f"{on} (each edit), {then}.")
    return found


@locked("approve")
def approve(repo: Repo, ref: str, *, key_path: Path | None = None, note: str = "") -> ApproveOutcome:
    """Approve edit ``ref`` at HEAD with the approver's key (``key_path``, default the repository's
    signing key), in a signed commit holding the approval alone.

    Raises:
        VerificationError: the edit does not verify (nobody approves what they cannot check).
        SigningError: the key is not in ``allowed_signers``, or is revoked.
        InvalidInputError: the key is the author's, this key approved the edit already, or changes are staged.
    """
    from cathrepo.provenance.allowed_signers import find_signer
    from cathrepo.provenance.keys import load_key
    from cathrepo.provenance.signing import write_envelope
    from cathrepo.repo.state import check_edit

    edit_id = repo.resolve_edit(ref)
    head = repo.git.rev_parse("HEAD")
    key = load_key(key_path) if key_path is not None else repo.signing_key()
    # 1. the edit verifies, and the key may approve it now
    check = check_edit(repo, head, edit_id)
    if check.issues:
        raise VerificationError(f"Edit {edit_id} does not verify: {check.issues[0]}.",
                                hint="Run 'cathrepo verify'; approve only what verifies.")
    now = int(time.time())
    if find_signer(signers_at(repo, head), key.public_key, principal=key.principal, at=now) is None:
        raise SigningError(f"The key {key.fingerprint} ({key.principal or 'no principal'}) is not a valid signer in "
                           "allowed_signers (not listed, or revoked).",
                           hint="Ask a maintainer to run 'cathrepo keys add PRINCIPAL KEY.pub' for it.")
    reader = _Reader(repo, head)
    raw, record, author = reader.edit(edit_id) or (b"", None, Author(None, None))
    if author.is_(key.principal, key.fingerprint):
        raise InvalidInputError(f"{key.principal} made edit {edit_id}; an author cannot approve their own edit.",
                                hint="Another signer in allowed_signers approves it.")
    path = layout.edit_path(edit_id, f"{DIRECTORY}/{approval_name(key.fingerprint)}")
    if path in reader.listing:
        raise InvalidInputError(f"{key.principal} ({key.fingerprint}) approved edit {edit_id} already.",
                                hint=f"See 'cathrepo show {edit_id}'.")
    staged = [line[3:] for line in repo.git.status_porcelain() if line[0] not in " ?"]
    if staged:
        raise InvalidInputError(f"Changes are staged ({', '.join(staged[:3])}); an approval commit holds the "
                                "approval alone.", hint="Commit or unstage them first (git restore --staged PATH).")
    # 2. the approval, written and committed alone, signed by the approver
    target = repo.root / path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_envelope(target, sign_approval(key, raw))
        repo.git.add([path])
        trailers = {"Cathrepo-Action": "approve", "Cathrepo-Edit": edit_id, "Cathrepo-Approved-By": key.principal,
                    "Cathrepo-Risk": record.risk if record is not None else "?"}
        message = f"Approve edit {edit_id}: {record.summary if record is not None else ''}".rstrip(": ")
        sha = repo.git.commit(message + (f"\n\n{note}" if note.strip() else ""), trailers, sign_with=key)
    except BaseException:
        repo.git.unstage([path])
        target.unlink(missing_ok=True)
        raise
    (status,) = statuses(repo, sha, [edit_id])
    mine = next((a for a in status.approvals if a.path == path), None)
    if mine is None:  # written and committed, yet it does not count: say why rather than claim success
        why = next((i for i in status.issues if i.startswith(path)), "it does not verify")
        raise VerificationError(f"The approval committed in {sha[:12]} does not count: {why}.",
                                hint=f"Undo it with 'git revert {sha[:12]}'.")
    return ApproveOutcome(mine, sha, status)
