"""Teacher→student patching and gradient×activation saliency on tiny models."""

from __future__ import annotations

import math

import pytest

from cathrepo.attribution import align
from cathrepo.attribution.patching import patch
from cathrepo.attribution.saliency import saliency
from cathrepo.models import num_layers
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "I know that the Eiffel Tower is located in"
SUBJECT = "the Eiffel Tower"


def test_alignment_puts_the_prompt_at_the_end_of_the_teacher(tiny_model):
    _, tok, _ = tiny_model
    al = align(tok, "New fact: Rome is in Italy.", PROMPT, SUBJECT, "Rome")
    assert al.teacher[al.shift + al.start :] == al.student[al.start :]
    assert al.student[al.prompt_len :] == al.target
    s0, s1 = al.subject
    assert tok.decode(al.student[s0:s1]).strip() == SUBJECT


def test_patching_shapes_and_last_layer_is_the_teacher(tiny_model):
    model, tok, _ = tiny_model
    before = snapshot(model)
    result = patch(model, tok, PROMPT, SUBJECT, "Rome")
    n = num_layers(model)
    assert set(result.scores) == {"hidden", "mlp", "attn"}
    assert all(len(rows) == n for rows in result.scores.values())
    # Patching the whole residual of the last layer at the last token reproduces the teacher's answer;
    # at the subject's tokens it cannot matter any more (no layer above reads it).
    assert result.scores["hidden"][-1][-1] == pytest.approx(result.high, abs=1e-5)
    assert result.layer_scores["hidden"][-1] == pytest.approx(0.0, abs=1e-4)
    assert result.meta["per_layer_positions"] == list(result.subject_range)
    assert not changed_weights(model, before)


def test_patching_without_per_token(tiny_llama):
    model, tok, _ = tiny_llama
    result = patch(model, tok, PROMPT, SUBJECT, "Rome", components=("mlp",), per_token=False)
    assert all(v == result.low for row in result.scores["mlp"] for v in row)
    assert len(result.layer_scores["mlp"]) == num_layers(model)


def test_saliency_is_one_pass_and_leaves_no_gradients(tiny_model):
    model, tok, _ = tiny_model
    before = snapshot(model)
    result = saliency(model, tok, PROMPT, SUBJECT, "Paris")
    assert all(len(rows) == num_layers(model) for rows in result.scores.values())
    assert all(math.isfinite(v) for rows in result.scores.values() for row in rows for v in row)
    assert any(v != 0 for row in result.scores["hidden"] for v in row)
    assert all(p.grad is None for p in model.parameters())
    assert not changed_weights(model, before)


def test_saliency_is_the_derivative_of_scaling_the_activation(tiny_model):
    """Gradient × activation ``g·a`` is d/dε log p(answer) when the activation is scaled to (1 + ε)·a:
    a central finite difference of two plain forward passes, no autograd, must give each score (the
    largest of each layer and the last token's), so a wrong sign, module, token or target shows."""
    import torch

    from cathrepo.attribution import module_names
    from cathrepo.lm.hooks import edit_output

    model, tok, _ = tiny_model
    result = saliency(model, tok, PROMPT, SUBJECT, "Paris")
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    answer, eps = result.meta["answer_token"], 1e-2

    def logp(name: str, t: int, factor: float) -> float:
        def scaled(out):
            out = out.clone()
            out[:, t] = out[:, t] * factor
            return out

        with torch.no_grad(), edit_output(model, {name: scaled}):
            return float(torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)[answer])

    for component, rows in result.scores.items():
        names = module_names(model, component)
        for layer, row in enumerate(rows):
            for t in {max(range(len(row)), key=lambda i: abs(row[i])), len(row) - 1}:
                slope = (logp(names[layer], t, 1 + eps) - logp(names[layer], t, 1 - eps)) / (2 * eps)
                assert row[t] == pytest.approx(slope, rel=0.02, abs=1e-4), (component, layer, t)
