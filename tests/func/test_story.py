"""Issue 13's whole story on real temporary repositories (tiny model, real git, DVC and signatures):
two branches propose different facts; ``cathrepo ci`` realises and gates them and writes its Markdown
report; a third branch proposes a conflicting fact and the conflict is reported; the branches merge
with each strategy; a consolidated pack passes its gates; an edit inside a pack is reverted; a
promotion and a rollback are logged and verified; and the installed hooks block an unsigned commit
(pre-push), a tampered weight (pre-commit) and an edit that fails the merge gates (pre-merge-commit)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cathrepo.exceptions import MergeConflictError
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo, layout
from tests.cli.runner import cathrepo
from tests.func.test_ci import THIRD, _clean, _merge_gates
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


def test_the_installed_hooks_block_an_unsigned_commit_a_tampered_weight_and_a_failing_edit(repo, tmp_path):
    import subprocess

    from cathrepo.config import dump_config, load_config
    from tests.func.test_hooks import _commit_blocked, _git

    repo.hooks(install=True)
    a = repo.edit([EditRequest(OTHER)])[0].edit_id
    b = repo.edit([EditRequest(FACT)])[0].edit_id
    # an unsigned commit does not leave the machine: pre-push verifies every pushed commit
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    _git(repo, "remote", "add", "origin", str(remote))
    (repo.root / "notes.txt").write_text("unsigned\n")
    _git(repo, "add", "notes.txt")
    _git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "unsigned")
    push = _git(repo, "push", "-q", "origin", "main", ok=False)
    assert push.returncode != 0 and "signature does not verify" in push.stderr
    _git(repo, "reset", "-q", "--hard", "HEAD~1")
    # a tampered weight is not committed: edit a's pointer now names edit b's weights
    pointer = layout.edit_path(a, layout.WEIGHTS_POINTER)
    (repo.root / pointer).write_bytes((repo.root / layout.edit_path(b, layout.WEIGHTS_POINTER)).read_bytes())
    said = _commit_blocked(repo, pointer)
    assert layout.edit_path(a, layout.WEIGHTS) in said and "sha256" in said
    # a failing edit is not merged: main's merge gates refuse any growth of an edited weight's norm
    config = load_config(repo.root / layout.CONFIG)
    strict = {**config.gates, "norms_max_growth": 1e-9,
              "stages": {**config.gates.get("stages", {}), "merge": ["norms"]}}
    (repo.root / layout.CONFIG).write_text(dump_config(dataclasses.replace(config, gates=strict)))
    repo.git.add([layout.CONFIG])
    repo.git.commit("Merge gates: no weight may grow", sign_with=repo.signing_key())
    repo.checkout("grow", create=True)
    repo.edit([EditRequest(THIRD)])
    repo.checkout("main")
    head = repo.git.head()
    merge = _git(repo, "merge", "--no-ff", "-q", "-m", "merge grow", "grow", ok=False)
    assert merge.returncode != 0 and "## cathrepo ci: FAILED" in merge.stderr and "norms" in merge.stderr
    assert repo.git.head() == head
