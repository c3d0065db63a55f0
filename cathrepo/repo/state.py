"""Reading an edit repository's state at a revision: the one module the verbs read it through.

An edit is read from git (its record, signature, probes, adapter config) and the DVC cache (its weights,
through the pointer committed at the revision), so any revision reads without a checkout. Verifying an
edit reads and hashes every file its record names; loading it reuses those bytes, so a command reads
each file once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    from cathrepo.repo.verified import Verified


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
    return _parse_signers(repo.git.show_file(rev, layout.ALLOWED_SIGNERS), rev)


def _parse_signers(data: bytes | None, rev: str) -> list[AllowedSigner]:
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
        issues.extend(_hash_issues(repo, path, data, expected, worktree=worktree and name == layout.WEIGHTS))
    return EditCheck(record, issues, files)


def _hash_issues(repo: Repo, path: str, data: bytes, expected: str, *, worktree: bool) -> list[Issue]:
    """``data`` of ``path`` against the record's sha256, and with ``worktree`` the work tree's copy too."""
    issues = []
    if sha256_bytes(data) != expected:
        issues.append(Issue(path, f"sha256 {sha256_bytes(data)[:12]}… differs from the record's {expected[:12]}…"))
    local = repo.root / path
    if worktree and local.is_file() and sha256_file(local) != expected:
        issues.append(Issue(path, "the copy in the work tree differs from the committed weights (modified)"))
    return issues


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


def check_edits(repo: Repo, sha: str, edit_ids: Sequence[str], *, worktree: bool = False,
                verified: Verified | None = None, records: bool = True,
                listing: Mapping[str, tuple[str, str]] | None = None) -> dict[str, EditCheck]:
    """:func:`check_edit` of several edits at commit ``sha``, their files read at once. An edit that
    ``verified`` knows (its directory's tree id verified against the same ``allowed_signers``) is checked
    by its weights alone; with ``records`` its record and adapter config are read for loading. Edits that
    verify now are added to ``verified`` (the caller saves it). ``listing``: ``list_tree(sha, "edits")``,
    when the caller has it."""
    from cathrepo.repo.verified import signers_key

    listing = listing if listing is not None else repo.git.list_tree(sha, layout.EDITS)
    raw_signers = repo.git.show_file(sha, layout.ALLOWED_SIGNERS)
    signers = _parse_signers(raw_signers, sha)
    key = signers_key(raw_signers)
    trees = {eid: listing.get(layout.edit_path(eid), ("", ""))[1] for eid in edit_ids}
    known = {eid: w for eid in edit_ids if verified and (w := verified.edit_weights(trees[eid], key))}
    light = (layout.WEIGHTS_POINTER, *((layout.RECORD, layout.ADAPTER_CONFIG) if records else ()))
    files_of: dict[str, list[str]] = {}
    for path, (kind, _) in listing.items():
        if kind == "blob":
            files_of.setdefault(path.split("/", 2)[1], []).append(path)
    wanted: dict[str, str] = {}
    for eid in edit_ids:
        below = [layout.edit_path(eid, n) for n in light] if eid in known else files_of.get(eid, [])
        wanted.update({path: listing[path][1] for path in below if listing.get(path, ("",))[0] == "blob"})
    data = repo.git.read_objects(list(wanted.values()))
    tree = {path: data[oid] for path, oid in wanted.items()}
    out: dict[str, EditCheck] = {}
    for eid in edit_ids:
        if eid in known:
            out[eid] = _check_weights(repo, sha, eid, known[eid], tree, worktree=worktree, records=records)
            continue
        check = out[eid] = check_edit(repo, sha, eid, signers, worktree=worktree, tree=tree)
        if verified is not None and not check.issues and check.record is not None and trees[eid]:
            verified.add_edit(trees[eid], key, check.record.files[layout.WEIGHTS])
    return out


def _check_weights(repo: Repo, sha: str, edit_id: str, expected: str, tree: Mapping[str, bytes], *,
                   worktree: bool, records: bool) -> EditCheck:
    """An already verified edit: only its weights, which git does not hold, are read and hashed."""
    path = layout.edit_path(edit_id, layout.WEIGHTS)
    try:
        _, weights = weights_bytes(repo, sha, edit_id, tree)
    except CathrepoError as exc:
        return EditCheck(None, [Issue(path, exc.message)])
    issues = _hash_issues(repo, path, weights, expected, worktree=worktree)
    files = {layout.WEIGHTS: weights}
    record = None
    if records:
        raw = tree.get(layout.edit_path(edit_id, layout.RECORD))
        config = tree.get(layout.edit_path(edit_id, layout.ADAPTER_CONFIG))
        if raw is None or config is None:
            return EditCheck(None, [*issues, Issue(layout.edit_path(edit_id), "record or adapter config missing")])
        record, files[layout.ADAPTER_CONFIG] = EditRecord.from_bytes(raw), config
    return EditCheck(record, issues, files)


def active_edits(repo: Repo, rev: str = "HEAD", *, verify: bool = True,
                 verified: Verified | None = None, ids: Sequence[str] | None = None) -> list[ActiveEdit]:
    """The active set of ``rev`` in stack order, each loaded and verified (its files read at once; with
    ``verified``, an edit this clone verified before is checked by its weights' hash alone). ``ids``:
    load only these (a tenant's share of the active set, :mod:`cathrepo.repo.tenants`), in their order."""
    sha = repo.git.rev_parse(rev)
    active = repo.stack(sha).active if ids is None else tuple(ids)
    if not active:
        return []
    if not verify:
        tree = repo.git.read_files(sha, layout.EDITS)
        return [load_edit(repo, eid, sha, verify=False, tree=tree) for eid in active]
    checks = check_edits(repo, sha, active, verified=verified)
    out = []
    for eid in active:
        check = checks[eid]
        if check.issues or check.record is None:
            first = check.issues[0] if check.issues else "unreadable"
            raise VerificationError(f"Edit {eid} does not verify: {first}.",
                                    hint="Run 'cathrepo verify' for the full list.")
        config = json.loads(check.files[layout.ADAPTER_CONFIG])
        out.append(ActiveEdit(eid, check.record, delta_from_parts(config, check.files[layout.WEIGHTS],
                                                                  what=f"edit {eid}")))
    if verified is not None:
        verified.save()
    return out


def probe_sets(repo: Repo, edit_ids: list[str], rev: str = "HEAD") -> list[ProbeSet]:
    """The committed probes of each edit (the regression suite), read at once."""
    if not edit_ids:
        return []
    sha = repo.git.rev_parse(rev)
    paths = [layout.edit_path(eid, layout.PROBES) for eid in edit_ids]
    listing = repo.git.list_tree(sha, layout.EDITS)
    missing = [path for path in paths if path not in listing]
    if missing:
        raise VerificationError(f"{missing[0]} is missing at {rev}.")
    data = repo.git.read_objects([listing[path][1] for path in paths])
    return [ProbeSet.from_jsonl(data[listing[path][1]].decode("utf-8")) for path in paths]
