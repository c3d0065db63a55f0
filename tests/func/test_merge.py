"""Branches and merges of edits on real repositories (tiny model): the union of two lines in one signed
merge commit, semantic conflicts stopping a merge and settled by --ours/--theirs, a revert merged like
any change, and a failed merge leaving the repository as it was."""

from __future__ import annotations

import dataclasses

import pytest

from cathrepo.exceptions import GateFailedError, InvalidInputError, MergeConflictError
from cathrepo.facts.schema import EditRequest, Fact
from cathrepo.repo import Repo, layout
from tests.func.test_ci import THIRD, _clean, _merge_gates
from tests.func.test_repo_flow import FACT, OTHER, _tune


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    _merge_gates(repo, ["efficacy", "regression"])
    return repo


def _edit(repo: Repo, fact: Fact) -> str:
    (result,) = repo.edit([EditRequest(fact)])
    return result.edit_id


def _parents(repo: Repo, rev: str = "HEAD") -> list[str]:
    return repo.git.log(rev, max_count=1)[0].parents


def test_merge_unions_two_lines_in_one_signed_merge_commit(repo):
    a = _edit(repo, OTHER)
    repo.checkout("facts", create=True)
    b = _edit(repo, FACT)
    weights = repo.root / layout.edit_path(b, layout.WEIGHTS)
    assert weights.is_file()
    repo.checkout("main")  # the other line's weights leave the work tree (they stay in the DVC cache)
    assert not weights.exists() and not weights.parent.parent.exists()
    c = _edit(repo, THIRD)
    assert [(x.name, x.active, x.current) for x in repo.branches()] == [("facts", 2, False), ("main", 2, True)]

    done = repo.merge("facts")
    assert done.active == (a, c, b) and done.added == (b,) and done.removed == ()
    assert done.report is not None and done.report.passed and done.report.stage == "merge"
    assert repo.stack("HEAD").active == (a, c, b)
    assert weights.is_file()  # and come back with the merge
    assert len(_parents(repo)) == 2
    assert "<<<<" not in (repo.root / layout.STACK).read_text()
    trailers = repo.git.log("HEAD", max_count=1)[0].trailers
    assert trailers["Cathrepo-Action"] == "merge" and trailers["Cathrepo-Active"] == "3"
    assert repo.verify().ok and _clean(repo)
    with pytest.raises(InvalidInputError, match="already merged"):
        repo.merge("facts")


def test_same_fact_with_two_answers_stops_the_merge_until_settled(repo):
    repo.checkout("london", create=True)
    london = _edit(repo, dataclasses.replace(FACT, target_new="London"))
    repo.checkout("main")
    paris = _edit(repo, FACT)
    head = repo.git.head()
    with pytest.raises(MergeConflictError) as caught:
        repo.merge("london")
    (conflict,) = caught.value.conflicts
    assert conflict.kind == "same-fact" and {conflict.ours, conflict.theirs} == {paris, london}
    assert repo.git.head() == head and _clean(repo)
    assert not (repo.root / ".git" / "MERGE_HEAD").exists()

    with pytest.raises(InvalidInputError, match="names 0 edits"):
        repo.merge("london", keep=["ffff"])
    kept = repo.merge("london", keep=[paris[:6]])  # cathrepo resolve: one conflict, one choice
    assert kept.active == (paris,) and kept.removed == ()
    repo.git.run(["reset", "-q", "--hard", head])
    done = repo.merge("london", resolution="theirs")
    assert done.active == (london,) and done.removed == (paris,) and done.settled == (conflict,)
    assert repo.git.log("HEAD", max_count=1)[0].trailers["Cathrepo-Resolution"].startswith("theirs")
    assert repo.verify().ok


def test_a_revert_on_a_branch_merges_like_any_change(repo):
    a = _edit(repo, OTHER)
    repo.checkout("undo", create=True)
    repo.revert(a)
    repo.checkout("main")
    b = _edit(repo, FACT)
    done = repo.merge("undo")
    assert done.active == (b,) and done.removed == (a,) and done.settled == ()


def test_an_edit_applied_on_one_side_and_reverted_on_the_other_conflicts(repo):
    repo.checkout("tried", create=True)
    e = _edit(repo, OTHER)
    edit_commit = repo.git.head()
    repo.revert(e)
    repo.checkout("main")
    repo.git.run(["cherry-pick", "--no-commit", edit_commit])  # main takes the edit the other side dropped
    repo.git.commit(f"Edit {e} (picked)", {"Cathrepo-Action": "edit", "Cathrepo-Edit": e}, sign_with=repo.signing_key())
    with pytest.raises(MergeConflictError) as caught:
        repo.merge("tried")
    assert [c.kind for c in caught.value.conflicts] == ["edit-vs-revert"]
    assert repo.merge("tried", resolution="ours").active == (e,)


def test_a_failing_merge_gate_leaves_the_repository_as_it_was(repo, monkeypatch):
    repo.checkout("facts", create=True)
    _edit(repo, FACT)
    repo.checkout("main")
    _edit(repo, OTHER)
    head = repo.git.head()
    import cathrepo.repo.merge as merging
    from cathrepo.gates.results import GateReport, GateResult

    failing = GateReport((GateResult("regression", False, {"broken": 1.0}, {}, "forced"),), "merge")
    monkeypatch.setattr(merging, "gate_union", lambda *a, **k: failing)
    with pytest.raises(GateFailedError, match="Merging 'facts'"):
        repo.merge("facts")
    assert repo.git.head() == head and _clean(repo) and not (repo.root / ".git" / "MERGE_HEAD").exists()
    forced = repo.merge("facts", force=True)
    assert len(forced.active) == 2
    assert "forced" in repo.git.log("HEAD", max_count=1)[0].trailers["Cathrepo-Gates"]


def test_branch_names_and_a_dirty_tree_are_refused(repo):
    with pytest.raises(InvalidInputError, match="not a valid branch name"):
        repo.create_branch("bad..name")
    with pytest.raises(InvalidInputError, match="No branch"):
        repo.checkout("nowhere")
    (repo.root / layout.STACK).write_text("{}")
    with pytest.raises(InvalidInputError, match="uncommitted changes"):
        repo.checkout("elsewhere", create=True)
    with pytest.raises(InvalidInputError, match="uncommitted changes"):
        repo.merge("main")
