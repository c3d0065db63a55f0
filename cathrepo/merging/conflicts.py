"""Semantic conflicts between the two sides of a merge (stage ⑦ of DESIGN.md §2).

Git merges files; two edit branches can merge cleanly in git and still disagree about the model:

- ``same-fact``: each side added an edit that says something different about the same subject and
  relation ("The capital of France is" → Lyon on ours, → Marseille on theirs);
- ``edit-vs-revert``: one side reverted an edit the other side still has active.

This module takes plain records and id sets, never a repository or git: the caller reads each side's
records, active set and reverted ids, and decides what to do with the :class:`Conflict` list.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field

from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.provenance.manifest import EditRecord

SAME_FACT = "same-fact"
EDIT_VS_REVERT = "edit-vs-revert"
_RESOLVE = "Use --ours, --theirs or cathrepo resolve."


@dataclass(frozen=True)
class MergeSide:
    """What one side of a merge holds.

    Attributes:
        records: edit id -> its record, for at least every active id (and every reverted one that the
            other side still has active).
        active: the side's active edit ids.
        reverted: the ids the side reverted and has not re-applied.
    """

    records: Mapping[str, EditRecord]
    active: Collection[str]
    reverted: Collection[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Conflict:
    """One semantic conflict.

    Attributes:
        kind: ``same-fact`` or ``edit-vs-revert``.
        ours, theirs: the edit id on each side (the same id for ``edit-vs-revert``).
        subject: the fact's subject, as our side wrote it (or the side where the edit is active).
        relation: the relation id ("P36") when both facts have one, else the relation template
            ("The capital of {} is").
        target_ours, target_theirs: what each side makes the model say ("forget: X" for a forget);
            None on the side where the edit is reverted.
        message: what happened and what to do.
    """

    kind: str
    ours: str
    theirs: str
    subject: str
    relation: str
    target_ours: str | None
    target_theirs: str | None
    message: str


def find_conflicts(ours: MergeSide, theirs: MergeSide) -> list[Conflict]:
    """Every semantic conflict between the two sides, in a stable order (kind, ours, theirs, subject).

    Raises:
        InvalidInputError: an id the comparison needs has no record on either side.
    """
    found = [*_same_fact(ours, theirs), *_edit_vs_revert(ours, theirs)]
    return sorted(set(found), key=lambda c: (c.kind, c.ours, c.theirs, c.subject, c.relation))


# --- same fact, different targets -----------------------------------------------------------------


def _norm(text: str) -> str:
    """Case and whitespace do not make a different subject, template or target."""
    return " ".join(text.split()).casefold()


def _target(fact: Fact) -> str:
    return fact.target_new if fact.action == "edit" else f"forget: {fact.target_new}"


def _relation(a: Fact, b: Fact) -> str | None:
    """The relation key the two facts share, or None when their relations differ.

    The relation id decides when both facts have one (the same relation asked in other words); otherwise
    the template, the prompt with the subject replaced by ``{}``.
    """
    if a.relation_id and b.relation_id:
        return a.relation_id if a.relation_id == b.relation_id else None
    return a.template if _norm(a.template) == _norm(b.template) else None


def _disagree(a: Fact, b: Fact) -> bool:
    """Two edits with different targets disagree; so do an edit and a forget of the same target.

    Two forgets never do, nor an edit and a forget of another target: both can hold at once.
    """
    same = _norm(a.target_new) == _norm(b.target_new)
    if a.action == b.action == "edit":
        return not same
    return a.action != b.action and same


def _facts(record: EditRecord) -> tuple[Fact, ...]:
    """Every fact a record writes: a MEMIT batch or a passage keeps them all in ``facts``."""
    return tuple(Fact.from_dict(f) for f in (record.facts or (record.fact,)))


def _record(edit_id: str, *sides: MergeSide) -> EditRecord:
    for side in sides:
        if edit_id in side.records:
            return side.records[edit_id]
    raise InvalidInputError(f"Edit {edit_id} is active or reverted in the merge but its record was not given.",
                            hint="Pass the records of every active and reverted edit of both sides.")


def _new_facts(side: MergeSide, other: MergeSide) -> Iterator[tuple[str, Fact]]:
    """(edit id, fact) of each edit active on ``side`` but not on ``other``.

    An edit active on both sides was seen by both (it is in their common history, or one side merged it
    already), so it conflicts with neither.
    """
    for edit_id in sorted(set(side.active) - set(other.active)):
        for fact in _facts(_record(edit_id, side, other)):
            yield edit_id, fact


def _same_fact(ours: MergeSide, theirs: MergeSide) -> Iterator[Conflict]:
    by_subject: dict[str, list[tuple[str, Fact]]] = {}
    for edit_id, fact in _new_facts(theirs, ours):
        by_subject.setdefault(_norm(fact.subject), []).append((edit_id, fact))
    for our_id, ours_fact in _new_facts(ours, theirs):
        for their_id, theirs_fact in by_subject.get(_norm(ours_fact.subject), ()):
            relation = _relation(ours_fact, theirs_fact)
            if relation is not None and _disagree(ours_fact, theirs_fact):
                yield _same_fact_conflict(our_id, their_id, ours_fact, theirs_fact, relation)


def _same_fact_conflict(our_id: str, their_id: str, a: Fact, b: Fact, relation: str) -> Conflict:
    message = (f"Both sides edit what the model says for '{a.subject}' ({relation}): ours (edit {our_id}) "
               f"says '{_target(a)}', theirs (edit {their_id}) says '{_target(b)}'. {_RESOLVE}")
    return Conflict(SAME_FACT, our_id, their_id, a.subject, relation, _target(a), _target(b), message)


# --- an edit one side reverted --------------------------------------------------------------------


def _edit_vs_revert(ours: MergeSide, theirs: MergeSide) -> Iterator[Conflict]:
    for keeps, reverts, ours_keeps in ((ours, theirs, True), (theirs, ours, False)):
        for edit_id in sorted(set(keeps.active) & set(reverts.reverted) - set(reverts.active)):
            fact = _facts(_record(edit_id, keeps, reverts))[0]
            target = _target(fact)
            relation = fact.relation_id or fact.template
            kept, dropped = ("ours", "theirs") if ours_keeps else ("theirs", "ours")
            message = (f"Edit {edit_id} ('{fact.prompt}' -> '{target}') is active on {kept} but {dropped} "
                       f"reverted it. {_RESOLVE}")
            yield Conflict(EDIT_VS_REVERT, edit_id, edit_id, fact.subject, relation,
                           target if ours_keeps else None, None if ours_keeps else target, message)
