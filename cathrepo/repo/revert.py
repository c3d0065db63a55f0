"""``cathrepo revert EDIT``: a new signed commit that removes one edit from the active set.

Revert is exact (DESIGN.md §1): the edit's files stay in the repository and only ``stack.json``
changes, so the model materialized afterwards is computed from the same base and the same remaining
deltas as before the edit was made. The revert-stage gates (the regression suite of the remaining
edits, retention) run first; a failing revert commits nothing unless forced. An edit inside a pack
takes the pack with it: the pack is folded again from the edits that remain, by the same strategy, in
the same commit (:func:`cathrepo.repo.packs.refold`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cathrepo.exceptions import GateFailedError, InvalidInputError
from cathrepo.repo import layout
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.gates.results import GateReport
    from cathrepo.repo import Repo


@dataclass(frozen=True)
class RevertOutcome:
    edit_id: str
    commit: str
    summary: str
    report: GateReport | None


@locked("revert")
def revert(
    repo: Repo,
    ref: str,
    *,
    gate: bool = True,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RevertOutcome:
    """Remove edit ``ref`` (id or prefix) from the active set in a signed commit.

    Args:
        gate: run the revert-stage gates first.
        force: commit even when those gates fail (the report is still recorded in the trailers).
    """
    from cathrepo.gates.base import run_gates
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.repo.packs import Pack, applied_deltas, carried, load_packs, refold, write_pack
    from cathrepo.repo.state import active_edits, probe_sets
    from cathrepo.repo.verified import Verified

    edit_id = repo.resolve_edit(ref)
    stack = repo.stack("HEAD")
    if edit_id not in stack.active:
        raise InvalidInputError(f"Edit {edit_id} is not active; there is nothing to revert.",
                                hint="See the active edits with 'cathrepo status'.")
    record = repo.record(edit_id)
    report = None
    packs = load_packs(repo, "HEAD", stack)
    in_pack = any(edit_id in p.record.edits for p in packs)
    edits = active_edits(repo, "HEAD", verified=Verified.of(repo.root)) if gate or in_pack else []
    remaining = [e for e in edits if e.id != edit_id]
    kept, fresh = refold(repo, packs, remaining, edit_id) if in_pack else (packs, [])
    if gate:
        pending = [Pack("pending", r, d) for r, d in fresh]
        report = run_gates(
            *repo.load_base(),
            before=carried(repo, applied_deltas(edits, packs)),
            after=carried(repo, applied_deltas(remaining, [*kept, *pending])),
            suite=probe_sets(repo, [e.id for e in remaining]),
            policy=GatePolicy.from_dict(repo.config.gates),
            stage="revert",
            base_hash=repo.config.base.sha256,
            progress=progress,
        )
        if not report.passed and not force:
            raise GateFailedError.from_report(report, f"Reverting {edit_id}", hint="Pass --force to revert anyway.")
    stack_path = repo.root / layout.STACK
    before = stack_path.read_bytes()
    staged: list[str] = []
    written: list[str] = []
    try:
        new_ids = []
        for pack_record, delta in fresh:  # a pack that held the edit, folded again without it
            pack, paths = write_pack(repo, pack_record, delta)
            written.append(layout.pack_path(pack.id))
            staged += paths
            new_ids.append(pack.id)
        after = stack.without(edit_id)
        if in_pack:
            after = after.with_packs(tuple([*(p.id for p in kept), *new_ids]))
        stack_path.write_bytes(after.to_bytes())
        repo.git.add([layout.STACK])
        trailers = {"Cathrepo-Action": "revert", "Cathrepo-Edit": edit_id}
        if new_ids:
            trailers["Cathrepo-Pack"] = " ".join(new_ids)
        if report is not None:
            trailers.update(report.trailers(per_gate=False, forced=not report.passed))
        sha = repo.git.commit(f"Revert edit {edit_id}: {record.summary}", trailers, sign_with=repo.signing_key())
    except BaseException:
        stack_path.write_bytes(before)
        repo.git.unstage([layout.STACK, *staged])
        for path in written:
            shutil.rmtree(repo.root / path, ignore_errors=True)
        raise
    return RevertOutcome(edit_id, sha, record.summary, report)
