"""The two phases on a tiny model: targets line up, each phase lowers its loss, the base gets no gradient."""

from __future__ import annotations

import pytest
import torch

from cathrepo.edits.lora import LoraParams
from cathrepo.facts.schema import Fact
from cathrepo.models import family_for
from cathrepo.training.adapters import lora_attached
from cathrepo.training.data import anchors, edit_examples
from cathrepo.training.distill import phase_a, phase_b
from cathrepo.training.targets import compute_targets

pytestmark = pytest.mark.usefixtures("one_thread")

FACT = Fact(prompt="I know that the Eiffel Tower is located in", subject="the Eiffel Tower",
            target_new="Rome", target_true="Paris")


@pytest.fixture
def setup(tiny_model):
    model, tok, _ = tiny_model
    family = family_for(model)
    modules = [family.layer_name("mlp_out", 1), family.layer_name("mlp_out", 2)]
    blocks = [family.layer_name("layer", 1), family.layer_name("layer", 2)]
    examples = edit_examples(tok, [FACT], prefixes=1, paraphrases=False)
    anchor_list = anchors(tok, [FACT], neighborhood=False, template=2, generic=2)
    targets = compute_targets(model, tok, examples, anchor_list, modules, blocks, match="from_subject")
    return model, tok, modules, blocks, examples, anchor_list, targets


def test_targets_layout(setup):
    model, tok, modules, blocks, examples, anchor_list, t = setup
    rows = len(examples) + len(anchor_list)
    assert t.batch.ids.shape[0] == rows and t.n_edit == len(examples)
    assert int(t.answer.sum()) == t.teacher_logp.shape[0] == t.answer_ids.numel()
    assert int(t.anchor.sum()) == t.anchor_logp.shape[0] and not t.anchor[: t.n_edit].any()
    assert not t.match[t.n_edit :].any() and t.match[: t.n_edit].any()
    assert t.manual_head  # the output embedding on the final norm reproduces the logits
    for m in modules:
        assert t.teacher_out[m].shape[:2] == t.batch.ids.shape
    assert torch.allclose(torch.logsumexp(t.teacher_logp, -1), torch.zeros(t.teacher_logp.shape[0]), atol=1e-4)


def test_phases_lower_their_losses(setup):
    model, tok, modules, blocks, _, _, targets = setup
    params = LoraParams(steps_a=8, steps_b=15, lr=3e-2, stop_kl=0.0, nll_weight=0.0)
    with lora_attached(model, modules, rank=4, alpha=8) as lora:
        log_a = phase_a(model, targets, modules, blocks, lora.parameters(), params)
        log_b = phase_b(model, targets, modules, lora.parameters(), params)
    assert log_a.steps == 8 and log_a.history[-1]["mse"] < log_a.history[0]["mse"]
    assert log_b.history[-1]["kl"] < log_b.history[0]["kl"]
    assert all(p.grad is None for p in model.parameters())
    summary = log_b.summary()
    assert summary["steps"] == 15 and set(summary["last"]) == {"loss", "mse", "kl", "nll", "anchor_kl", "anchor_rise"}


def test_phase_b_stops_early(setup):
    model, _, modules, _, _, _, targets = setup
    params = LoraParams(steps_b=30, stop_kl=1e9, stop_nll=1e9)
    with lora_attached(model, modules, rank=2, alpha=2) as lora:
        log_b = phase_b(model, targets, modules, lora.parameters(), params)
    assert log_b.steps == 2
