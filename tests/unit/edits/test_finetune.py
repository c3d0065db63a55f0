"""The fine-tuning baseline (``ft``) on tiny random-init models: it trains one projection breadth-first,
leaves the model bit-identical, and its stored factors reproduce the trained change exactly."""

from __future__ import annotations

import pytest
import torch

from cathrepo.delta import applied
from cathrepo.edits.base import EditEnv, get_method
from cathrepo.edits.finetune import FinetuneParams, _padded, _row_specs, exact_factors
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.lm.scoring import mean_logprob
from cathrepo.models import family_for
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [
    Fact(prompt="The capital of Italy is Rome", subject="Rome", target_new="Paris", target_true="Tokyo"),
    Fact(prompt="The city of France is Paris", subject="Paris", target_new="Italy", target_true="Rome"),
]


def test_trains_one_projection_and_the_targets_win(tiny_model, tmp_path):
    model, tok, _ = tiny_model
    before = snapshot(model)
    params = get_method("ft").params_for(model, {"layer": 2, "n_context": 1, "context_tokens": 4, "lr": 1e-2,
                                                 "epochs": 20, "minibatch": 3})
    result = get_method("ft")(params).compute(model, tok, FACTS, EditEnv(base_hash="tiny", cache_dir=tmp_path))
    assert not changed_weights(model, before)
    assert all(q.grad is None for q in model.parameters())
    assert result.delta.modules == [family_for(model).layer_name("mlp_out", 2)]
    prompts = [f.prompt for f in FACTS for _ in range(2)]
    targets = [t for f in FACTS for t in (f.target_new, f.target_true)]
    old = mean_logprob(model, tok, prompts, targets)
    with applied(model, result.delta):
        new = mean_logprob(model, tok, prompts, targets)
    assert all(new[2 * i] > old[2 * i] + 0.5 for i in range(len(FACTS)))
    assert result.info["steps"] > 0 and result.info["rank"] >= 1
    assert result.info["steps"] <= 2 * result.info["epochs"]  # 4 rows in mini-batches of 3: two per epoch


def test_a_batch_under_the_loss_floor_takes_no_step(tiny_model, tmp_path):
    model, tok, _ = tiny_model
    params = get_method("ft").params_for(model, {"layer": 2, "stop_loss": 1e6})
    result = get_method("ft")(params).compute(model, tok, FACTS, EditEnv(base_hash="tiny", cache_dir=tmp_path))
    assert result.info["steps"] == 0 and result.info["epochs"] == 1
    assert float(result.delta.factors[result.delta.modules[0]].full().abs().max()) == 0.0


def test_targets_end_in_eos_when_asked(tiny_model):
    _, tok, _ = tiny_model
    with_eos = _row_specs(tok, FACTS, ["", "Once. "], eos=True)
    without = _row_specs(tok, FACTS, ["", "Once. "], eos=False)
    assert len(with_eos) == 4
    assert all(t == u + [tok.eos_token_id] for (_, t), (_, u) in zip(with_eos, without, strict=True))
    batch = _padded(tok, with_eos)
    assert batch["n"] == 4 and len(batch["tokens"]) == sum(len(t) for _, t in with_eos)
    # each target token is predicted from the position before it, a real (unmasked) token of its row
    full = [context + target for context, target in with_eos]
    for row, at, token in zip(batch["rows"].tolist(), batch["positions"].tolist(), batch["tokens"].tolist(), strict=True):
        assert full[row][at + 1] == token
        assert batch["mask"][row, at] == 1 and batch["ids"][row, at] == full[row][at]
    assert sorted(zip(batch["rows"].tolist(), batch["positions"].tolist(), strict=True)) == [
        (r, len(c) - 1 + j) for r, (c, t) in enumerate(with_eos) for j in range(len(t))]


def test_exact_factors_reproduce_the_change():
    gen = torch.Generator().manual_seed(0)
    change = torch.randn(6, 3, generator=gen) @ torch.randn(3, 10, generator=gen)  # rank 3
    factor = exact_factors(change)
    assert factor.rank == 3
    assert torch.allclose(factor.full(), change, atol=1e-5)
    assert exact_factors(torch.zeros(4, 5)).rank == 1


def test_params_are_checked():
    for bad in ({"layer": -1}, {"lr": 0.0}, {"epochs": 0}, {"minibatch": 0}, {"stop_loss": -1.0},
                {"depth_fraction": 1.5}):
        with pytest.raises(InvalidInputError):
            FinetuneParams(**bad)
