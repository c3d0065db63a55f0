"""Reading an edit repository's state at a revision: the one module the verbs read it through.

An edit is read from git (its record, signature, probes, adapter config) and the DVC cache (its weights,
through the pointer committed at the revision), so any revision reads without a checkout. Verifying an
edit reads and hashes every file its record names; loading it reuses those bytes, so a command reads
each file once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cathrepo.delta import delta_from_parts
from cathrepo.exceptions import CathrepoError, VerificationError
from cathrepo.facts.probes import ProbeSet
from cathrepo.files import sha256_bytes, sha256_file
from cathrepo.provenance.allowed_signers import parse_allowed_signers
from cathrepo.provenance.manifest import EditRecord
from cathrepo.provenance.manifest import edit_id as id_of
from cathrepo.provenance.signing import verify_payload
from cathrepo.repo import layout

if TYPE_CHECKING:
    from cathrepo.delta import Delta
    from cathrepo.provenance.allowed_signers import AllowedSigner
    from cathrepo.repo import Repo


@dataclass(frozen=True)
class Issue:
    """One thing that does not verify: the file (or commit) and what is wrong with it."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class ActiveEdit:
    """One edit of a revision's active set, loaded and verified."""

    id: str
    record: EditRecord
    delta: Delta


def signers_at(repo: Repo, rev: str) -> list[AllowedSigner]:
    """Who may sign at ``rev``: its committed ``allowed_signers``."""
    data = repo.git.show_file(rev, layout.ALLOWED_SIGNERS)
    if data is None:
        raise VerificationError(f"{layout.ALLOWED_SIGNERS} is missing at {rev}.")
    return parse_allowed_signers(data.decode("utf-8"), source=f"{rev}:{layout.ALLOWED_SIGNERS}")


def read_file(repo: Repo, rev: str, path: str, tree: Mapping[str, bytes] | None = None) -> bytes | None:
    """``path`` at ``rev``: from ``tree`` (every file below ``edits/`` at ``rev``, read at once by
    :meth:`~cathrepo.repo.git.Git.read_files`) when given, else from git."""
    return tree.get(path) if tree is not None else repo.git.show_file(rev, path)


def weights_bytes(repo: Repo, rev: str, edit_id: str, tree: Mapping[str, bytes] | None = None) -> tuple[Path, bytes]:
    """The cached weight file of an edit at ``rev`` (through its committed DVC pointer) and its bytes."""
    pointer = read_file(repo, rev, layout.edit_path(edit_id, layout.WEIGHTS_POINTER), tree)
    if pointer is None:
        raise VerificationError(f"{layout.edit_path(edit_id, layout.WEIGHTS_POINTER)} is missing at {rev}.")
    md5, _size, _rel = repo.storage.read_pointer(pointer)
    path = repo.storage.fetch_object(md5)
    return path, path.read_bytes()


@dataclass
class EditCheck:
    """What verifying one edit found: its record (None if unreadable), the issues, and the bytes of every
    file that was read and hashed (so a caller that loads the edit reads no file twice)."""

    record: EditRecord | None
    issues: list[Issue]
    files: dict[str, bytes] = field(default_factory=dict)


def check_edit(repo: Repo, rev: str, edit_id: str, signers: list[AllowedSigner] | None = None,
               *, worktree: bool = False, tree: Mapping[str, bytes] | None = None) -> EditCheck:
    """Verify one edit at ``rev``: its id, its signature, and the hash of every file its record names
    (read from ``tree`` when given: see :func:`read_file`)."""
    issues: list[Issue] = []
    record_path = layout.edit_path(edit_id, layout.RECORD)
    raw = read_file(repo, rev, record_path, tree)
    if raw is None:
        return EditCheck(None, [Issue(record_path, f"missing at {rev}")])
    if id_of(raw) != edit_id:
        issues.append(Issue(record_path, f"hashes to {id_of(raw)}, not to its edit id {edit_id} (modified)"))
    sig_path = layout.edit_path(edit_id, layout.SIGNATURE)
    sig = read_file(repo, rev, sig_path, tree)
    try:
        if sig is None:
            raise VerificationError("missing")
        envelope = json.loads(sig.decode("utf-8"))
        verify_payload(envelope, raw, signers if signers is not None else signers_at(repo, rev), what=sig_path)
    except (VerificationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        issues.append(Issue(sig_path, getattr(exc, "message", str(exc))))
    try:
        record = EditRecord.from_bytes(raw, what=record_path)
    except VerificationError as exc:
        return EditCheck(None, [*issues, Issue(record_path, exc.message)])
    files: dict[str, bytes] = {}
    for name, expected in sorted(record.files.items()):
        path = layout.edit_path(edit_id, name)
        data: bytes | None
        try:
            if name == layout.WEIGHTS:
                _, data = weights_bytes(repo, rev, edit_id, tree)
            else:
                data = read_file(repo, rev, path, tree)
                if data is None:
                    raise VerificationError("missing")
        except CathrepoError as exc:
            issues.append(Issue(path, exc.message))
            continue
        files[name] = data
        if sha256_bytes(data) != expected:
            issues.append(Issue(path, f"sha256 {sha256_bytes(data)[:12]}… differs from the record's {expected[:12]}…"))
        if worktree and name == layout.WEIGHTS:
            local = repo.root / path
            if local.is_file() and sha256_file(local) != expected:
                issues.append(Issue(path, "the copy in the work tree differs from the committed weights (modified)"))
    return EditCheck(record, issues, files)


def load_edit(repo: Repo, edit_id: str, rev: str = "HEAD", *, verify: bool = True,
              signers: list[AllowedSigner] | None = None, tree: Mapping[str, bytes] | None = None) -> ActiveEdit:
    """Read (and by default verify, against ``signers`` or those committed at ``rev``) one edit at
    ``rev``; raises naming the first file that fails."""
    files: dict[str, bytes] = {}
    if verify:
        check = check_edit(repo, rev, edit_id, signers, tree=tree)
        if check.issues or check.record is None:
            first = check.issues[0] if check.issues else "unreadable"
            raise VerificationError(f"Edit {edit_id} does not verify: {first}.",
                                    hint="Run 'cathrepo verify' for the full list.")
        record, files = check.record, check.files
    else:
        record = repo.record(edit_id, rev)
    config_bytes = files.get(layout.ADAPTER_CONFIG) or read_file(repo, rev, layout.edit_path(edit_id, layout.ADAPTER_CONFIG),
                                                                 tree)
    if config_bytes is None:
        raise VerificationError(f"{layout.edit_path(edit_id, layout.ADAPTER_CONFIG)} is missing at {rev}.")
    weights = files.get(layout.WEIGHTS) or weights_bytes(repo, rev, edit_id, tree)[1]
    delta = delta_from_parts(json.loads(config_bytes), weights, what=f"edit {edit_id}")
    return ActiveEdit(edit_id, record, delta)


def active_edits(repo: Repo, rev: str = "HEAD", *, verify: bool = True) -> list[ActiveEdit]:
    """The active set of ``rev`` in stack order, each loaded and verified (the revision resolved and its
    signers read once: every edit's files are then read through one object reader)."""
    sha = repo.git.rev_parse(rev)
    signers = signers_at(repo, sha) if verify else None
    active = repo.stack(sha).active
    tree = repo.git.read_files(sha, layout.EDITS) if active else None
    return [load_edit(repo, eid, sha, verify=verify, signers=signers, tree=tree) for eid in active]


def probe_sets(repo: Repo, edit_ids: list[str], rev: str = "HEAD") -> list[ProbeSet]:
    """The committed probes of each edit (the regression suite)."""
    sets = []
    sha = repo.git.rev_parse(rev) if edit_ids else rev
    for eid in edit_ids:
        data = repo.git.show_file(sha, layout.edit_path(eid, layout.PROBES))
        if data is None:
            raise VerificationError(f"{layout.edit_path(eid, layout.PROBES)} is missing at {rev}.")
        sets.append(ProbeSet.from_jsonl(data.decode("utf-8")))
    return sets
