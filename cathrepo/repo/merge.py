"""``cathrepo merge BRANCH``: join another line of edits into this one in one signed merge commit.

1. Semantic conflicts first (:mod:`cathrepo.merging.conflicts`): the same subject and relation with
   different answers on the two sides, or an edit one side reverted and the other kept, stop the merge
   with both edits named, unless ``--ours``/``--theirs`` settles every one of them.
2. The active set after the merge is the three-way merge of the two sides' ``stack.json``
   (:meth:`~cathrepo.repo.layout.Stack.merged`), so the file never ends in a textual conflict; edits and
   proposals are content-addressed directories and merge cleanly; any other file git cannot merge
   stops the merge with the file named.
3. Every edit the merge brings in has the approvals its risk tier needs (``cathrepo approve`` on the
   branch; :mod:`cathrepo.repo.approve`), or nothing is merged (``--force`` does not waive them).
4. The merge-stage gates run on this side's active set → the union (:func:`gate_union`): the new
   edits must still hold, this side's must keep holding, retention, perplexity, norms and MMLU.
5. git's merge underneath (``--no-commit``), ``stack.json`` written, one signed merge commit. A failure
   at any step aborts git's merge: the repository is as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import GateFailedError, GitError, InvalidInputError, MergeConflictError
from cathrepo.repo import layout
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.delta import Delta
    from cathrepo.facts.probes import ProbeSet
    from cathrepo.gates.results import GateReport
    from cathrepo.merging.conflicts import Conflict, MergeSide
    from cathrepo.repo import Repo
    from cathrepo.repo.layout import Stack


@dataclass(frozen=True)
class MergeOutcome:
    """What a merge did: the commit, the active set after it, the edits it brought in or dropped, the
    conflicts it settled (and how) and the merge gates' report."""

    branch: str
    commit: str
    active: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    settled: tuple[Conflict, ...] = ()
    resolution: str | None = None
    report: GateReport | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def merge_base(repo: Repo, a: str, b: str) -> str | None:
    """The best common ancestor of two commits (None for unrelated histories)."""
    try:
        return repo.git.run(["merge-base", a, b]).strip() or None
    except GitError:
        return None


def side(repo: Repo, rev: str) -> MergeSide:
    """One side of a merge as :func:`~cathrepo.merging.conflicts.find_conflicts` reads it: every edit's
    record at ``rev``, its active set, and the edits present but not active (reverted)."""
    from cathrepo.merging.conflicts import MergeSide
    from cathrepo.provenance.manifest import EditRecord

    sha = repo.git.rev_parse(rev)
    listing = repo.git.list_tree(sha, layout.EDITS)
    oids = {p.split("/")[1]: oid for p, (kind, oid) in listing.items() if p.endswith("/" + layout.RECORD)}
    data = repo.git.read_objects(list(oids.values()))
    records = {eid: EditRecord.from_bytes(data[oid], what=layout.edit_path(eid, layout.RECORD))
               for eid, oid in oids.items()}
    active = repo.stack(sha).active
    return MergeSide(records, active, frozenset(set(records) - set(active)))


def winners(conflicts: Sequence[Conflict], *, resolution: str | None, keep: Sequence[str],
            ours: MergeSide, theirs: MergeSide) -> list[tuple[Conflict, str | None]]:
    """Each conflict with the edit that stays active (None: an edit-vs-revert settled as reverted): the
    edit named in ``keep``, else the side ``resolution`` names; a conflict neither settles stops the merge."""
    from cathrepo.merging.conflicts import SAME_FACT

    chosen = {"ours": ours, "theirs": theirs}.get(resolution or "")
    out: list[tuple[Conflict, str | None]] = []
    open_ = []
    for c in conflicts:
        named = [e for e in (c.ours, c.theirs) if e in keep]
        if named:
            out.append((c, named[0]))
        elif chosen is not None:
            out.append((c, c.ours if c.ours in chosen.active else (c.theirs if c.kind == SAME_FACT else None)))
        else:
            open_.append(c)
    if open_:
        raise MergeConflictError(
            f"{len(open_)} conflict(s) stop the merge: " + " ".join(c.message for c in open_), conflicts=open_,
            hint="Settle them with --ours or --theirs, or 'cathrepo resolve BRANCH --keep EDIT' for each.")
    return out


def settle(union: Stack, decided: Sequence[tuple[Conflict, str | None]]) -> Stack:
    """The union with each conflict settled: of two edits of one fact only the winner stays; an edit one
    side reverted is active exactly when it won."""
    from cathrepo.merging.conflicts import SAME_FACT

    active = list(union.active)
    for c, winner in decided:
        if c.kind == SAME_FACT:
            loser = c.theirs if winner == c.ours else c.ours
            active = [e for e in active if e != loser]
        elif winner is not None and winner not in active:
            active.append(winner)
        elif winner is None:
            active = [e for e in active if e != c.ours]
    return type(union)(tuple(active), union.schema_version, union.extra, union.packs)


def gate_union(repo: Repo, *, before: Sequence[str], before_rev: str, after: Sequence[str], after_rev: str,
               held: Sequence[tuple[Delta, ProbeSet]] = (), model: Any = None, tokenizer: Any = None,
               progress: Callable[[str], None] | None = None) -> GateReport:
    """The merge-stage gates on the change from the active set ``before`` (edits read at ``before_rev``)
    to ``after`` (edits not in ``before`` read at ``after_rev``) plus ``held`` deltas not committed: the
    new edits' probes are the probes, the edits kept from ``before`` the regression suite. The policy is
    ``before_rev``'s: the line merged into sets the bar, not the branch that wants in."""
    from cathrepo.gates.base import run_gates
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.pipeline import merge_probe_sets
    from cathrepo.repo.packs import carried
    from cathrepo.repo.state import load_edit, probe_sets

    new = [e for e in after if e not in before]
    kept = [e for e in after if e in before]
    deltas = {e: load_edit(repo, e, before_rev).delta for e in before}
    deltas.update({e: load_edit(repo, e, after_rev).delta for e in new})
    if model is None:
        model, tokenizer = repo.load_base()
    config = repo.config_at(before_rev)
    return run_gates(
        model, tokenizer,
        before=carried(repo, [deltas[e] for e in before], config),
        after=carried(repo, [*(deltas[e] for e in after), *(d for d, _ in held)], config),
        probes=merge_probe_sets([*probe_sets(repo, new, after_rev), *(p for _, p in held)]),
        suite=probe_sets(repo, kept, before_rev),
        policy=GatePolicy.from_dict(config.gates), stage="merge", base_hash=config.base.sha256,
        root=repo.root, progress=progress,
    )


@locked("merge")
def merge(repo: Repo, branch: str, *, resolution: str | None = None, keep: Sequence[str] = (),
          strategy: str | None = None, gate: bool = True, force: bool = False,
          progress: Callable[[str], None] | None = None) -> MergeOutcome:
    """Merge ``branch`` into the checked-out line (see the module docstring).

    Args:
        resolution: "ours" or "theirs": how every semantic conflict is settled (None: conflicts stop it).
        keep: edit ids (or prefixes) that win their conflicts, one by one (``cathrepo resolve``); a
            conflict they do not name is settled by ``resolution``.
        strategy: after the merge commit, fold the active edits into one pack by this strategy
            (:func:`cathrepo.repo.packs.consolidate`, its own signed commit); a pack that fails its gates
            is not written, the edits stay as they are, and ``extra["pack_refused"]`` says why.
        gate: run the merge-stage gates; force: commit even when they fail (recorded in the trailers).
    """
    from cathrepo.merging.conflicts import find_conflicts
    from cathrepo.merging.strategies import get_strategy
    from cathrepo.repo.approve import require_approvals
    from cathrepo.repo.branch import require_clean, sync_weights
    from cathrepo.repo.packs import consolidate

    if resolution not in (None, "ours", "theirs"):
        raise InvalidInputError(f"Unknown resolution '{resolution}'.", hint="Use ours or theirs.")
    require_clean(repo, "merging")
    ours_sha, theirs_sha = repo.git.rev_parse("HEAD"), repo.git.rev_parse(branch)
    ancestor = merge_base(repo, ours_sha, theirs_sha)
    if ancestor == theirs_sha:
        raise InvalidInputError(f"'{branch}' is already merged: every commit of it is in HEAD.", hint="Nothing to do.")
    ours, theirs = side(repo, ours_sha), side(repo, theirs_sha)
    keep = [_full_id(k, [*ours.records, *theirs.records]) for k in keep]
    before = repo.stack(ancestor).active if ancestor else ()
    conflicts = [c for c in find_conflicts(ours, theirs) if not _plain_revert(c, before)]
    decided = winners(conflicts, resolution=resolution, keep=keep, ours=ours, theirs=theirs)
    base_stack = repo.stack(ours_sha)
    union = base_stack.merged(repo.stack(ancestor) if ancestor else type(base_stack)(), repo.stack(theirs_sha))
    union = settle(union, decided)
    union = _whole_packs(repo, union, ours_sha)
    added = [e for e in union.active if e not in base_stack.active]
    if added:  # this line's policy decides, as for the gates; --force does not waive approvals
        require_approvals(repo, theirs_sha, added, config=repo.config_at(ours_sha), doing=f"Merging '{branch}'",
                          where=branch)
    report = None
    if gate and union.active != base_stack.active:
        report = gate_union(repo, before=base_stack.active, before_rev=ours_sha, after=union.active,
                            after_rev=theirs_sha, progress=progress)
        if not report.passed and not force:
            raise GateFailedError.from_report(report, f"Merging '{branch}'", hint="Pass --force to merge anyway.")
    if strategy is not None:
        get_strategy(strategy)  # a bad spec fails before anything is merged
    sha = _commit_merge(repo, branch, theirs_sha, union, conflicts, resolution, report)
    sync_weights(repo)
    extra: dict[str, Any] = {}
    if strategy is not None and len(union.active) >= 2:
        try:
            folded = consolidate(repo, strategy=strategy, gate=gate, progress=progress)
            extra.update(pack=folded.pack.id, pack_commit=folded.commit, pack_report=folded.report)
            sha = folded.commit
        except GateFailedError as exc:
            extra["pack_refused"] = exc.message
    return MergeOutcome(branch, sha, union.active,
                        tuple(e for e in union.active if e not in base_stack.active),
                        tuple(e for e in base_stack.active if e not in union.active),
                        tuple(conflicts), resolution, report, extra)


def _whole_packs(repo: Repo, union: Stack, ours_sha: str) -> Stack:
    """This side's packs that still fold only active edits stay; one that lost an edit in the merge is
    dropped (its edits apply one by one again; 'cathrepo consolidate' folds them anew)."""
    from cathrepo.repo.packs import load_packs

    if not union.packs:
        return union
    whole = [p.id for p in load_packs(repo, ours_sha) if set(p.record.edits) <= set(union.active)]
    return union.with_packs(tuple(whole))


def _full_id(prefix: str, ids: Sequence[str]) -> str:
    matches = sorted({e for e in ids if e.startswith(prefix.strip().lower())}) if len(prefix.strip()) >= 4 else []
    if len(matches) != 1:
        raise InvalidInputError(f"--keep {prefix} names {len(matches)} edits of the two sides.",
                                hint="Give the id (or a unique prefix of 4+ digits) an edit of either side has.")
    return matches[0]


def _plain_revert(conflict: Conflict, ancestor_active: Sequence[str]) -> bool:
    """An edit active since the common ancestor that one side reverted is that side's revert, merged like
    any change; it conflicts only when the other side (re-)applied the edit since the ancestor."""
    from cathrepo.merging.conflicts import EDIT_VS_REVERT

    return conflict.kind == EDIT_VS_REVERT and conflict.ours in ancestor_active


def _commit_merge(repo: Repo, branch: str, theirs_sha: str, union: Stack, conflicts: Sequence[Conflict],
                  resolution: str | None, report: GateReport | None) -> str:
    """git's merge without committing, ``stack.json`` set to ``union``, one signed merge commit; any
    failure aborts git's merge."""
    try:
        repo.git.run(["merge", "--no-commit", "--no-ff", "-q", theirs_sha])
        failed = False
    except GitError:
        failed = True  # a textual conflict (stack.json is settled below) or a refusal (checked below)
    try:
        unmerged = [p for p in repo.git.run(["diff", "--name-only", "--diff-filter=U"]).splitlines()
                    if p and p != layout.STACK]
        if unmerged:
            raise GitError(f"git cannot merge {', '.join(unmerged)} of '{branch}' with this branch's.",
                           hint="Merge those files by hand with git, then run 'cathrepo merge' again.")
        if failed and not (repo.root / ".git" / "MERGE_HEAD").exists():
            raise GitError(f"git merge of '{branch}' failed.", hint="Run 'git merge --no-commit' by hand to see why.")
        (repo.root / layout.STACK).write_bytes(union.to_bytes())
        repo.git.add([layout.STACK])
        trailers = {"Cathrepo-Action": "merge", "Cathrepo-Merge": theirs_sha,
                    "Cathrepo-Active": str(len(union.active))}
        if conflicts:
            trailers["Cathrepo-Resolution"] = f"{resolution or 'keep'} ({len(conflicts)} conflict(s))"
        if report is not None:
            trailers.update(report.trailers(per_gate=False, forced=not report.passed))
        return repo.git.commit(f"Merge '{branch}': {len(union.active)} active edit(s)", trailers,
                               sign_with=repo.signing_key())
    except BaseException:
        try:
            repo.git.run(["merge", "--abort"])
        except GitError:
            pass  # nothing to abort: git's merge never started
        raise
