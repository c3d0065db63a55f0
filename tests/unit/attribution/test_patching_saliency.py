"""Teacher→student patching and gradient×activation saliency on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from cathrepo.attribution import align
from cathrepo.attribution.patching import patch
from cathrepo.attribution.saliency import saliency
from cathrepo.models import num_layers

PROMPT = "I know that the Eiffel Tower is located in"
SUBJECT = "the Eiffel Tower"


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_alignment_puts_the_prompt_at_the_end_of_the_teacher(tiny_model):
    _, tok, _ = tiny_model
    al = align(tok, "New fact: Rome is in Italy.", PROMPT, SUBJECT, "Rome")
    assert al.teacher[al.shift + al.start :] == al.student[al.start :]
    assert al.student[al.prompt_len :] == al.target
    s0, s1 = al.subject
    assert tok.decode(al.student[s0:s1]).strip() == SUBJECT


def test_patching_shapes_and_last_layer_is_the_teacher(tiny_model):
    model, tok, _ = tiny_model
    before = _state(model)
    result = patch(model, tok, PROMPT, SUBJECT, "Rome")
    n = num_layers(model)
    assert set(result.scores) == {"hidden", "mlp", "attn"}
    assert all(len(rows) == n for rows in result.scores.values())
    # Patching the whole residual of the last layer at the last token reproduces the teacher's answer;
    # at the subject's tokens it cannot matter any more (no layer above reads it).
    assert result.scores["hidden"][-1][-1] == pytest.approx(result.high, abs=1e-5)
    assert result.layer_scores["hidden"][-1] == pytest.approx(0.0, abs=1e-4)
    assert result.meta["per_layer_positions"] == list(result.subject_range)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_patching_without_per_token(tiny_llama):
    model, tok, _ = tiny_llama
    result = patch(model, tok, PROMPT, SUBJECT, "Rome", components=("mlp",), per_token=False)
    assert all(v == result.low for row in result.scores["mlp"] for v in row)
    assert len(result.layer_scores["mlp"]) == num_layers(model)


def test_saliency_is_one_pass_and_leaves_no_gradients(tiny_model):
    model, tok, _ = tiny_model
    before = _state(model)
    result = saliency(model, tok, PROMPT, SUBJECT, "Paris")
    assert all(len(rows) == num_layers(model) for rows in result.scores.values())
    assert all(math.isfinite(v) for rows in result.scores.values() for row in rows for v in row)
    assert any(v != 0 for row in result.scores["hidden"] for v in row)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
