"""The fine-tuning baseline (``ft``) on tiny random-init models: it trains one projection, leaves the
model bit-identical, and its stored factors reproduce the trained change exactly."""

from __future__ import annotations

import pytest
import torch

from cathrepo.delta import applied
from cathrepo.edits.base import EditEnv, get_method
from cathrepo.edits.finetune import FinetuneParams, exact_factors
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
                                                 "steps": 40})
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


def test_exact_factors_reproduce_the_change():
    gen = torch.Generator().manual_seed(0)
    change = torch.randn(6, 3, generator=gen) @ torch.randn(3, 10, generator=gen)  # rank 3
    factor = exact_factors(change)
    assert factor.rank == 3
    assert torch.allclose(factor.full(), change, atol=1e-5)
    assert exact_factors(torch.zeros(4, 5)).rank == 1


def test_params_are_checked():
    for bad in ({"layer": -1}, {"lr": 0.0}, {"stop_prob": 1.0}, {"late_fraction": 1.5}):
        with pytest.raises(InvalidInputError):
            FinetuneParams(**bad)
