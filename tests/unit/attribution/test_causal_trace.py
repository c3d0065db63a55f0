"""Causal tracing on tiny models: shapes, baselines, determinism, and the cached runs equal plain ones."""

from __future__ import annotations

import math

import pytest
import torch

from cathrepo.attribution import ScoreMap, module_names
from cathrepo.attribution.causal_trace import embedding_std, trace
from cathrepo.lm.hooks import capture, edit_output
from cathrepo.lm.tokens import first_token_id, subject_token_span
from cathrepo.models import family_for, num_layers
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "I know that the Eiffel Tower is located in"
SUBJECT = "the Eiffel Tower"


@pytest.fixture(scope="module")
def traced(tiny_llama):
    model, tok, _ = tiny_llama
    return trace(model, tok, PROMPT, SUBJECT, "Paris", samples=2, seed=1)


def test_shapes_baselines_and_untouched_tokens(tiny_model):
    model, tok, _ = tiny_model
    before = snapshot(model)
    result = trace(model, tok, PROMPT, SUBJECT, "Paris", samples=2)
    n_tokens = len(tok(PROMPT)["input_ids"])
    s0, s1 = subject_token_span(tok, PROMPT, SUBJECT)
    assert s0 > 0 and result.subject_range == (s0, s1)
    assert set(result.scores) == {"hidden", "mlp", "attn"}
    for rows in result.scores.values():
        assert len(rows) == num_layers(model) and all(len(r) == n_tokens for r in rows)
        assert all(row[t] == result.low for row in rows for t in range(s0))  # nothing to restore there
    # The high baseline is the clean run's probability of the answer's first token.
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        clean = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    assert result.meta["answer_token"] == first_token_id(tok, "Paris")
    assert result.high == pytest.approx(float(clean[first_token_id(tok, "Paris")]), rel=1e-5)
    # Restoring the whole residual at the last layer and token is the clean run.
    assert result.scores["hidden"][-1][-1] == pytest.approx(result.high, abs=1e-5)
    assert not changed_weights(model, before)


def test_deterministic_given_seed(tiny_llama, traced):
    model, tok, _ = tiny_llama
    again = trace(model, tok, PROMPT, SUBJECT, "Paris", samples=2, seed=1)
    assert again.scores == traced.scores
    other = trace(model, tok, PROMPT, SUBJECT, "Paris", samples=2, seed=2)
    assert other.scores != traced.scores


def test_cached_runs_equal_plain_restores(tiny_llama, traced):
    """The KV-cached, batched suffix runs compute what ROME's one-run-per-state loop computes, and the
    low baseline is its corrupted run."""
    model, tok, _ = tiny_llama
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    s0, s1 = traced.subject_range
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(2, s1 - s0, model.config.hidden_size, generator=gen) * 3 * embedding_std(model)
    embed = family_for(model).embed
    answer = traced.meta["answer_token"]
    names = module_names(model, "hidden")
    with torch.no_grad(), capture(model, names) as clean:
        model(input_ids=ids)

    def corrupt(e):
        e = e.clone()
        e[:, s0:s1] += noise
        return e

    # The low baseline is the corrupted run's mean probability, nothing restored.
    with torch.no_grad(), edit_output(model, {embed: corrupt}):
        probs = torch.softmax(model(input_ids=ids.expand(2, -1)).logits[:, -1], -1)[:, answer]
    assert traced.low == pytest.approx(float(probs.mean()), abs=1e-5)
    for layer, t in ((0, s0), (1, s1 - 1), (2, ids.shape[1] - 1), (3, s0 + 1)):
        def restore(o, layer=layer, t=t):
            o = o.clone()
            o[:, t] = clean.outputs[names[layer]][0, t]
            return o

        with torch.no_grad(), edit_output(model, {embed: corrupt, names[layer]: restore}):
            probs = torch.softmax(model(input_ids=ids.expand(2, -1)).logits[:, -1], -1)[:, answer]
        assert traced.scores["hidden"][layer][t] == pytest.approx(float(probs.mean()), abs=1e-5)


def test_token_subset_and_greedy_target(tiny_llama):
    model, tok, _ = tiny_llama
    s0, s1 = subject_token_span(tok, PROMPT, SUBJECT)
    result = trace(model, tok, PROMPT, SUBJECT, None, components=("mlp",), samples=1, tokens=[s1 - 1])
    assert list(result.scores) == ["mlp"] and result.target
    assert all(row[s1] == result.low for row in result.scores["mlp"])
    assert len(result.layer_scores["mlp"]) == num_layers(model)


def test_json_roundtrip(traced):
    data = traced.to_json()
    back = ScoreMap.from_json(data)
    assert back.tokens == traced.tokens and back.subject_range == traced.subject_range
    assert math.isclose(back.scores["mlp"][1][3], traced.scores["mlp"][1][3], abs_tol=1e-6)


def test_unknown_component_is_refused(tiny_llama):
    from cathrepo.exceptions import InvalidInputError

    model, tok, _ = tiny_llama
    with pytest.raises(InvalidInputError, match="component"):
        trace(model, tok, PROMPT, SUBJECT, components=("ffn",))


def test_bfloat16_runs_stay_close(tiny_llama, traced):
    from cathrepo.exceptions import InvalidInputError

    model, tok, _ = tiny_llama
    fast = trace(model, tok, PROMPT, SUBJECT, "Paris", samples=2, seed=1, precision="bfloat16")
    assert fast.meta["precision"] == "bfloat16"
    for component in traced.scores:
        for a, b in zip(fast.scores[component], traced.scores[component], strict=True):
            assert a == pytest.approx(b, abs=0.05)
    with pytest.raises(InvalidInputError, match="precision"):
        trace(model, tok, PROMPT, SUBJECT, "Paris", precision="fp8")
