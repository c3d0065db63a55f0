"""A forget end to end on a tiny model: committed, signed, verified, and reverted bit for bit."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
import torch

from cathrepo.config import dump_config, load_config
from cathrepo.exceptions import GateFailedError
from cathrepo.facts.schema import EditRequest, Fact
from cathrepo.repo import Repo, layout
from tests.func.test_repo_flow import _tune

FORGET = Fact(prompt="The capital of Italy is Rome", subject="Rome", target_new="Paris", action="forget")
ROME = {"layer": 1, "corpus_tokens": 400, "n_context": 2, "context_tokens": 4, "v_steps": 40,
        "clamp_norm_factor": 10.0, "v_weight_decay": 0.0}


def _forget_tune(repo: Repo, **gates) -> None:
    """The edit settings of _tune, negate's ROME at layer 1, and a forget stage a tiny model can meet."""
    config = load_config(repo.root / layout.CONFIG)
    params = {**config.edit.params, "negate": {"rome": ROME}, "suppress": {"rome": ROME, "abstention": "Tokyo"}}
    stages = {**config.gates.get("stages", {}), "forget": ["efficacy", "forget_rank", "regression"]}
    config = dataclasses.replace(config, edit=dataclasses.replace(config.edit, params=params),
                                 gates={**config.gates, "stages": stages, "forget_top_k": 1, **gates})
    (repo.root / layout.CONFIG).write_text(dump_config(config))
    repo.git.add([layout.CONFIG])
    repo.git.commit("Tune forgetting for a tiny model")


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    _forget_tune(repo)
    return repo


def _logits(model, tok) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(FORGET.prompt, return_tensors="pt")).logits[0, -1].clone()


def test_forget_commits_signed_verifies_and_reverts_bit_for_bit(repo, one_thread):
    model, tok = repo.load_base()
    base = _logits(model, tok)
    (outcome,) = repo.forget([EditRequest(FORGET, source="test://forget")], mode="negate")
    assert outcome.commit and outcome.report.stage == "forget" and outcome.report.passed
    record = repo.record(outcome.edit_id)
    assert record.action == "forget" and record.fact["action"] == "forget" and record.fact["target_new"] == "Paris"
    assert record.method == "negate" and record.params["mode"] == "negate" and record.params["scale"] < 0
    assert subprocess.run(["git", "verify-commit", outcome.commit], cwd=repo.root).returncode == 0
    assert repo.git.log(outcome.commit, max_count=1)[0].trailers["Cathrepo-Action"] == "forget"
    assert [e.active for e in repo.log() if e.edit_id == outcome.edit_id] == [True]
    assert repo.verify().ok
    forgot = repo.materialize()
    assert not torch.equal(_logits(forgot.model, forgot.tokenizer), base)
    repo.revert(outcome.edit_id)
    restored = repo.materialize()
    assert torch.equal(_logits(restored.model, restored.tokenizer), base)


def test_a_refused_forget_commits_nothing(repo, one_thread):
    _forget_tune(repo, forget_top_k=100_000)  # no answer can rank outside the whole vocabulary
    head = repo.git.head()
    with pytest.raises(GateFailedError, match="forget_rank"):
        repo.forget([EditRequest(FORGET)], mode="suppress")
    assert repo.git.head() == head and repo.stack().active == ()
