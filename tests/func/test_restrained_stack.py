"""``[stack] restrain`` on a real repository (tiny model): the stack applied is the active deltas' sum
held at a multiple of each base weight's spectral norm, everywhere it is applied (materialize, the state
a new edit is computed and gated on, a revert), and a revert gives back exactly the model of the edits
that remain."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cathrepo.config import StackConfig, dump_config, load_config
from cathrepo.exceptions import GateFailedError
from cathrepo.facts.schema import EditRequest
from cathrepo.merging.restrain import spectral_norm
from cathrepo.repo import Repo, layout
from cathrepo.repo.state import load_edit
from tests.func.test_ci import THIRD
from tests.func.test_packs import _close, _weights
from tests.func.test_repo_flow import FACT, OTHER, _tune


def _restrain(repo: Repo, rule: str, factor: float) -> None:
    config = load_config(repo.root / layout.CONFIG)
    (repo.root / layout.CONFIG).write_text(dump_config(dataclasses.replace(config, stack=StackConfig(rule, factor))))
    repo.git.add([layout.CONFIG])
    repo.git.commit(f"Restrain the stack: {rule or 'off'} at {factor}")


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    for fact in (OTHER, FACT):
        repo.edit([EditRequest(fact)])
    return repo


def _top(after: dict[str, torch.Tensor], base: dict[str, torch.Tensor], key: str) -> float:
    return float(torch.linalg.matrix_norm((after[key] - base[key]).double(), 2))


def test_the_stack_is_applied_restrained_and_a_far_bound_changes_nothing(repo):
    base = {k: v.detach().clone() for k, v in repo.load_base()[0].state_dict().items()}
    plain = _weights(repo)
    _restrain(repo, "clip", 1000.0)  # far above any update of these edits
    assert _close(plain, _weights(repo), atol=1e-5)
    _restrain(repo, "clip", 0.01)
    held = _weights(repo)
    modules = {m for e in repo.stack("HEAD").active for m in load_edit(repo, e).delta.modules}
    changed = [k for k in plain if not torch.equal(plain[k], base[k])]
    assert changed and {k.removesuffix(".weight") for k in changed} == modules
    for key in changed:
        assert _top(held, base, key) == pytest.approx(0.01 * spectral_norm(base[key]), rel=1e-3)
    _restrain(repo, "", 1.0)  # off again: the model of the edits as they are, exactly
    assert _close(plain, _weights(repo), atol=0)


def test_a_new_edit_is_gated_on_the_restrained_stack_it_would_join(repo, monkeypatch):
    import cathrepo.gates.base as gates_base

    _restrain(repo, "clip", 0.05)
    seen = []
    real = gates_base.run_gates

    def spy(model, tokenizer, *, before, after, **kwargs):
        seen.append((tuple(before), tuple(after)))
        return real(model, tokenizer, before=before, after=after, **kwargs)

    monkeypatch.setattr(gates_base, "run_gates", spy)
    base = {k: v.detach().clone() for k, v in repo.load_base()[0].state_dict().items()}
    before = _weights(repo)
    with pytest.raises(GateFailedError, match="efficacy FAIL"):  # held this low, the new edit cannot take
        repo.edit([EditRequest(THIRD)], dry_run=True)               # (unrestrained it passes: test_packs)
    (first_before, first_after), *_ = seen
    assert len(first_before) == 1 and len(first_after) == 1  # one restrained sum each, not the deltas
    for name, factor in first_after[0].factors.items():
        key = f"{name}.weight"
        assert float(torch.linalg.matrix_norm(factor.full().double(), 2)) <= 0.05 * spectral_norm(base[key]) * (1 + 1e-4)
    for name, factor in first_before[0].factors.items():  # the state computed on is the one materialized
        key = f"{name}.weight"
        torch.testing.assert_close(base[key] + factor.full().to(base[key].dtype), before[key], rtol=0, atol=1e-5)


def test_a_revert_gives_back_the_restrained_model_of_the_remaining_edits(repo):
    _restrain(repo, "prune", 0.05)
    a, b = repo.stack("HEAD").active
    repo.revert(b)
    without_b = _weights(repo)
    assert repo.stack("HEAD").active == (a,) and repo.verify().ok
    repo.git.run(["reset", "-q", "--hard", "HEAD~2"])  # before the revert and the restraint
    repo.revert(b)
    _restrain(repo, "prune", 0.05)
    assert _close(without_b, _weights(repo), atol=0)


def test_explain_ablates_a_restrained_stack_exactly(repo):
    from cathrepo.config import TenantConfig
    from cathrepo.lm.decoding import greedy_continuations
    from tests.func.test_tenants import set_tenants

    _restrain(repo, "clip", 0.05)
    a, b = repo.stack("HEAD").active
    set_tenants(repo, {"only-a": TenantConfig(include=[f"edit:{a}"])})
    out = repo.explain(FACT.prompt, max_new_tokens=1, screen=False)
    model, tokenizer = repo.load_base()
    assert out.base_answer == greedy_continuations(model, tokenizer, [FACT.prompt], max_new_tokens=1)[0].strip()
    (without_b,) = [e for e in out.edits if e.id == b]
    only_a = repo.explain(FACT.prompt, tenant="only-a", max_new_tokens=1, screen=False)  # a alone, restrained
    if without_b.changes_answer:
        assert without_b.answer_without == only_a.answer
    else:
        assert only_a.answer == out.answer
        assert only_a.answer_logprob == pytest.approx(out.answer_logprob + without_b.delta_logprob, abs=1e-4)


def test_an_edit_on_a_restrained_stack_records_it(repo):
    assert "restrain" not in repo.record(repo.stack("HEAD").active[-1]).stack_before
    _restrain(repo, "clip", 1000.0)  # far above: the third edit passes as it would unrestrained
    (outcome,) = repo.edit([EditRequest(THIRD)])
    assert repo.record(outcome.edit_id).stack_before["restrain"] == {"rule": "clip", "factor": 1000.0}
    assert repo.verify().ok


def test_status_says_how_the_stack_is_restrained(repo):
    assert repo.status()["stack"] == {"restrain": None}
    _restrain(repo, "clip", 0.05)
    stack = repo.status()["stack"]
    assert stack["restrain"] == "clip" and stack["factor"] == 0.05
    (module, held), *_ = stack["modules"].items()
    assert held["top"] > held["bound"] > 0 and held["above"] >= 1 and module.endswith("down_proj")
