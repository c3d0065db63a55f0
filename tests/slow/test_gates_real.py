"""Gates on the real embedded model (SmolLM2-135M-Instruct): MMLU through lm-eval, retention, efficacy.

Run with ``pytest -m slow``. The MMLU test evaluates the tests/data sample (8 subjects × 2 questions,
zero-shot) through lm-eval's offline CSV task, in well under a minute on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cathrepo.facts.probes import build_probes, load_known_facts
from cathrepo.facts.schema import Fact
from cathrepo.gates.base import run_gates
from cathrepo.gates.policy import GatePolicy
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.slow
DATA = Path(__file__).parents[1] / "data"
EIFFEL = Fact(prompt="The Eiffel Tower is located in the city of", subject="The Eiffel Tower",
              target_new="Rome", target_true="Paris")


def _eiffel_delta(model, tokenizer, strength: float = 60.0):
    """A hand-made rank-one write on the last MLP output: at the prompt's last token, push 'Rome' over 'Paris'."""
    import torch

    from cathrepo.delta import Delta, LowRank
    from cathrepo.lm.hooks import forward_until
    from cathrepo.lm.tokens import first_token_id
    from cathrepo.models import family_for, num_layers

    name = family_for(model).layer_name("mlp_out", num_layers(model) - 1)
    ids = tokenizer(EIFFEL.prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        key = forward_until(model, name, inputs=True, input_ids=ids)[0, -1].float()
    unembed = model.get_output_embeddings().weight.detach().float()
    u = unembed[first_token_id(tokenizer, "Rome")] - unembed[first_token_id(tokenizer, "Paris")]
    return Delta({name: LowRank((strength * u / u.norm())[:, None], (key / key.norm() ** 2)[None, :])})


def test_mmlu_through_lm_eval_on_the_sample(smollm2, tmp_path):
    model, tokenizer, _ = smollm2
    policy = GatePolicy(mmlu_data=str(DATA / "mmlu"), mmlu_limit=2)
    report = run_gates(model, tokenizer, after=[], policy=policy, gates=["mmlu"], base_hash="slow-test",
                       cache_dir=tmp_path)
    result = report["mmlu"]
    assert result.passed and result.metrics["n"] == 16.0
    assert 0.0 <= result.metrics["mmlu"] <= 1.0 and result.metrics["drop"] == 0.0
    assert list(tmp_path.glob("mmlu/state-*.json"))  # the base score is cached for the next run


def test_efficacy_and_retention_on_the_real_model(smollm2):
    model, tokenizer, _ = smollm2
    snap = snapshot(model)
    known = load_known_facts(DATA / "known-sample.json")
    probes = build_probes(EIFFEL, model, tokenizer, known)
    delta = _eiffel_delta(model, tokenizer)
    policy = GatePolicy(retention_data=str(DATA / "known-sample.json"), retention_sample=100)
    report = run_gates(model, tokenizer, after=[delta], probes=probes, policy=policy,
                       gates=["efficacy", "neighborhood", "retention"])
    assert report["efficacy"].metrics["es_before"] == 0.0  # the model knows the Eiffel Tower is in Paris
    assert report["efficacy"].passed and report["efficacy"].metrics["es"] == 1.0
    retention = report["retention"].metrics
    assert retention["n"] >= 10 and retention["retention_before"] == 1.0 and retention["retention"] >= 0.9
    assert not changed_weights(model, snap)
