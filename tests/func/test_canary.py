"""``cathrepo canary`` on a real repository (tiny model): canary against production on prompts, the
limits, and --auto-rollback writing a signed rollback."""

from __future__ import annotations

import json

import pytest

from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo
from tests.func.test_deploy import promote_gates
from tests.func.test_repo_flow import FACT, OTHER, _tune

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    promote_gates(repo, ["regression"])
    return repo


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [FACT.prompt, OTHER.prompt, "The weather today is", "My favourite food is"]
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in rows) + "\n")
    return path


def test_canary_compares_and_rolls_back_past_a_limit(repo, prompts):
    with pytest.raises(InvalidInputError, match="Nothing is on canary"):
        repo.canary(prompts)
    repo.edit([EditRequest(OTHER)])
    production = repo.git.head()
    repo.promote(production, "production", "the first edit")
    repo.promote(production, "canary", "the same revision")
    same = repo.canary(prompts)
    assert same.passed and same.kl_mean == pytest.approx(0.0, abs=1e-9) and same.changed == []
    assert same.regression is not None and same.regression.passed

    repo.edit([EditRequest(FACT)])
    repo.promote("HEAD", "canary", "the second edit")
    lenient = repo.canary(prompts, max_kl=10.0, max_changed=1.0)
    assert lenient.passed and lenient.kl_max > 0.0 and lenient.rolled_back is None
    strict = repo.canary(prompts, max_kl=0.0, max_changed=0.0, auto_rollback=True)
    assert not strict.passed and strict.failures and strict.rolled_back is not None
    assert repo.deployments().current["canary"] == production
    entry = repo.deployments("canary").entries[-1]
    assert entry.action == "rollback" and "canary check failed" in entry.reason
    assert repo.verify().ok


def test_prompt_files_are_checked(repo, tmp_path):
    from cathrepo.repo.canary import read_prompts

    plain = tmp_path / "plain.txt"
    plain.write_text("The capital of France is\n\nWater boils at\n")
    assert read_prompts(plain) == ["The capital of France is", "Water boils at"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt"}\n')
    with pytest.raises(InvalidInputError, match="bad.jsonl:1"):
        read_prompts(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(InvalidInputError, match="holds 0 prompts"):
        read_prompts(empty)

