"""Semantic conflicts: the same subject and relation given different targets on the two sides, and an
edit one side reverted while the other keeps it; from plain records and id sets, without git."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from cathrepo.exceptions import InvalidInputError
from cathrepo.merging.conflicts import EDIT_VS_REVERT, SAME_FACT, MergeSide, find_conflicts
from cathrepo.provenance.manifest import EditRecord

CAPITAL = "The capital of {} is"


def _fact(subject: str, target: str, template: str = CAPITAL, relation_id: str | None = "P36",
          action: str = "edit") -> dict[str, Any]:
    return {"prompt": template.format(subject), "subject": subject, "target_new": target,
            "relation_id": relation_id, "action": action}


def _record(*facts: dict[str, Any]) -> EditRecord:
    return EditRecord(action=facts[0]["action"], fact=facts[0], method="rome", params={}, site={}, source=None,
                      author="test", created="2024-01-01T00:00:00+00:00", confidence=1.0, risk="low",
                      base_model={"name": "tiny", "sha256": "0"}, files={},
                      facts=tuple(facts) if len(facts) > 1 else ())


def _side(records: dict[str, EditRecord], active: set[str] | None = None,
          reverted: frozenset[str] | set[str] = frozenset()) -> MergeSide:
    return MergeSide(records, set(records) if active is None else active, reverted)


def _conflicts(ours: dict[str, EditRecord], theirs: dict[str, EditRecord]):
    return find_conflicts(_side(ours), _side(theirs))


def test_the_same_fact_with_different_targets_conflicts():
    [conflict] = _conflicts({"o1": _record(_fact("France", "Lyon"))}, {"t1": _record(_fact("France", "Marseille"))})
    assert (conflict.kind, conflict.ours, conflict.theirs) == (SAME_FACT, "o1", "t1")
    assert (conflict.subject, conflict.relation) == ("France", "P36")
    assert (conflict.target_ours, conflict.target_theirs) == ("Lyon", "Marseille")
    assert "'Lyon'" in conflict.message and "'Marseille'" in conflict.message
    assert conflict.message.endswith("Use --ours, --theirs or cathrepo resolve.")


def test_the_same_target_on_both_sides_is_no_conflict():
    assert _conflicts({"o1": _record(_fact("France", "Lyon"))}, {"t1": _record(_fact("France", " lyon "))}) == []


def test_different_subjects_do_not_conflict():
    assert _conflicts({"o1": _record(_fact("France", "Lyon"))}, {"t1": _record(_fact("Italy", "Milan"))}) == []


def test_subjects_match_across_case_and_whitespace():
    ours = {"o1": _record(_fact("New  York", "Albany", relation_id=None))}
    theirs = {"t1": _record(_fact("new york", "Buffalo", relation_id=None))}
    assert [c.kind for c in _conflicts(ours, theirs)] == [SAME_FACT]


def test_the_relation_is_matched_by_template_when_an_id_is_missing():
    ours = {"o1": _record(_fact("France", "Lyon", relation_id="P36"))}
    [conflict] = _conflicts(ours, {"t1": _record(_fact("France", "Nice", relation_id=None))})
    assert conflict.relation == CAPITAL
    other = {"t1": _record(_fact("France", "Nice", template="The largest city of {} is", relation_id=None))}
    assert _conflicts(ours, other) == []


def test_relation_ids_decide_when_both_sides_have_one():
    ours = {"o1": _record(_fact("France", "Lyon"))}
    reworded = {"t1": _record(_fact("France", "Nice", template="{}'s capital city is"))}
    assert [c.relation for c in _conflicts(ours, reworded)] == ["P36"]
    other_relation = {"t1": _record(_fact("France", "Nice", relation_id="P1376"))}
    assert _conflicts(ours, other_relation) == []


def test_an_edit_both_sides_have_conflicts_with_neither():
    shared = _record(_fact("France", "Lyon"))
    newer = _record(_fact("France", "Nice"))
    ours = _side({"s": shared})
    theirs = _side({"s": shared, "t1": newer})  # theirs already overrode the shared edit
    assert find_conflicts(ours, theirs) == []


def test_a_multi_fact_record_conflicts_on_the_fact_that_differs():
    batch = _record(_fact("Spain", "Madrid"), _fact("France", "Lyon"), _fact("Peru", "Lima"))
    theirs = {"t1": _record(_fact("France", "Nice"), _fact("Peru", "Lima"))}
    [conflict] = _conflicts({"o1": batch}, theirs)
    assert (conflict.subject, conflict.target_ours, conflict.target_theirs) == ("France", "Lyon", "Nice")


def test_an_edit_and_a_forget_of_the_same_answer_conflict():
    forget = {"t1": _record(_fact("France", "Lyon", action="forget"))}
    [conflict] = _conflicts({"o1": _record(_fact("France", "Lyon"))}, forget)
    assert conflict.target_theirs == "forget: Lyon"
    both_forget = {"o1": _record(_fact("France", "Paris", action="forget"))}
    assert _conflicts(both_forget, forget) == []


def test_an_edit_one_side_reverted_conflicts_both_ways():
    records = {"e1": _record(_fact("France", "Lyon")), "e2": _record(_fact("Peru", "Cusco"))}
    ours = _side(records, active={"e1"}, reverted={"e2"})
    theirs = _side(records, active={"e2"}, reverted={"e1"})
    kept_by_ours, kept_by_theirs = find_conflicts(ours, theirs)
    assert (kept_by_ours.kind, kept_by_ours.ours, kept_by_ours.theirs) == (EDIT_VS_REVERT, "e1", "e1")
    assert (kept_by_ours.target_ours, kept_by_ours.target_theirs) == ("Lyon", None)
    assert "active on ours but theirs reverted it" in kept_by_ours.message
    assert (kept_by_theirs.ours, kept_by_theirs.target_ours, kept_by_theirs.target_theirs) == ("e2", None, "Cusco")
    assert kept_by_theirs.message.endswith("Use --ours, --theirs or cathrepo resolve.")


def test_an_edit_reverted_on_both_sides_is_no_conflict():
    records = {"e1": _record(_fact("France", "Lyon"))}
    assert find_conflicts(_side(records, set(), {"e1"}), _side(records, set(), {"e1"})) == []


def test_a_missing_record_is_named():
    with pytest.raises(InvalidInputError, match="Edit o9 is active"):
        find_conflicts(MergeSide({}, {"o9"}), _side({}))


def test_reading_conflicts_imports_neither_torch_nor_git():
    code = ("import sys, cathrepo.merging.conflicts; "
            "print(*[m for m in ('torch', 'git', 'cathrepo.repo') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""
