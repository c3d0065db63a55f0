"""Issue 13's whole story on real temporary repositories (tiny model, real git, DVC and signatures):
two branches propose different facts; ``cathrepo ci`` realises and gates them and writes its Markdown
report; a third branch proposes a conflicting fact and the conflict is reported; the branches merge
with each strategy; a consolidated pack passes its gates; an edit inside a pack is reverted; a
promotion and a rollback are logged and verified."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cathrepo.exceptions import MergeConflictError
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo, layout
from tests.cli.runner import cathrepo
from tests.func.test_ci import _clean, _merge_gates
from tests.func.test_deploy import promote_gates
from tests.func.test_repo_flow import FACT, OTHER, _tune

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    _merge_gates(repo, ["efficacy", "regression"])
    promote_gates(repo, ["regression"])
    return repo


def _weights(repo: Repo) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in repo.materialize().model.state_dict().items()}


def _one_by_one(repo: Repo) -> dict[str, torch.Tensor]:
    """The base model with every active edit's own delta applied (no pack)."""
    from cathrepo.delta import apply_deltas
    from cathrepo.repo.state import active_edits

    model, _ = repo.load_base()
    apply_deltas(model, [e.delta for e in active_edits(repo)])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _propose_and_realise(repo: Repo, branch: str, fact, tmp_path) -> str:
    repo.checkout("main")
    repo.checkout(branch, create=True)
    (pid,) = repo.propose([EditRequest(fact, source=f"https://example.org/{branch}")]).ids
    summary = tmp_path / f"{branch}.md"
    out = cathrepo("ci", "--base", "main", "--commit", "--summary", str(summary), cwd=repo.root)
    text = summary.read_text()
    assert text == out.stdout and text.startswith("## cathrepo ci: passed")
    assert f"`{pid}`" in text and "| committed |" in text and "### Merge gates" in text
    (edit_id,) = [e for e in repo.stack("HEAD").active if repo.record(e).proposal == pid]
    return edit_id


def test_the_whole_story(repo, tmp_path):
    # 1. two branches propose different facts; ci realises, gates and commits each, and reports
    paris = _propose_and_realise(repo, "paris", FACT, tmp_path)
    guitar = _propose_and_realise(repo, "guitar", OTHER, tmp_path)
    # 2. a third branch proposes a fact that contradicts the first branch's
    london = _propose_and_realise(repo, "london", dataclasses.replace(FACT, target_new="London"), tmp_path)
    repo.checkout("main")
    # 3. merges, one strategy each (the pack of a strategy the gates refuse is not written: reported)
    first = repo.merge("paris", strategy="cat")
    assert first.active == (paris,) and "pack" not in first.extra  # one edit: nothing to fold
    second = repo.merge("guitar", strategy="svd:4")
    assert second.active == (paris, guitar)
    assert ("pack" in second.extra) != ("pack_refused" in second.extra)
    assert repo.stack("HEAD").packs == ((second.extra["pack"],) if "pack" in second.extra else ())
    with pytest.raises(MergeConflictError) as caught:
        repo.merge("london", strategy="ties")
    (conflict,) = caught.value.conflicts
    assert conflict.kind == "same-fact" and {conflict.ours, conflict.theirs} == {paris, london}
    assert _clean(repo)
    third = repo.merge("london", resolution="ours", strategy="dare:0.1")
    assert third.active == (paris, guitar) and third.settled == (conflict,)
    assert ("pack" in third.extra) != ("pack_refused" in third.extra)
    # 4. an exact pack passes its gates; the model is the same with it as with the edits one by one
    before = _one_by_one(repo)
    packed = repo.consolidate(strategy="cat")
    assert packed.report is not None and packed.report.passed
    after = _weights(repo)
    assert all(torch.allclose(before[k], after[k], atol=1e-6, rtol=0) for k in before)
    # 5. an edit inside the pack is reverted: the pack is folded without it (one edit left: dropped)
    repo.revert(guitar)
    assert repo.stack("HEAD").active == (paris,) and repo.stack("HEAD").packs == ()
    # 6. a promotion and a rollback, logged, signed and verified
    reverted = repo.git.head()
    repo.promote("HEAD~1", "canary", "before the revert")
    repo.promote(reverted, "canary", "the story so far")
    done = repo.rollback("canary", "rehearsal")
    assert done.entry.action == "rollback" and repo.deployments().current["canary"] == repo.git.rev_parse(reverted + "~1")
    report = repo.verify()
    assert report.ok and report.deployments == 3
    assert len(repo.git.list_files("HEAD", layout.PROPOSALS)) == 9  # three proposals, three files each
