"""The LoRA round trip (PEFT logits == apply_delta logits == reloaded PEFT adapter) and layer replay."""

from __future__ import annotations

import copy

import pytest
import torch

from cathrepo.delta import applied, save_delta
from cathrepo.lm.hooks import capture
from cathrepo.models import family_for
from cathrepo.training.adapters import lora_attached
from cathrepo.training.replay import checked_replay, replayed
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "The Eiffel Tower is located in the city of"


def test_delta_reproduces_the_peft_model(tiny_model, tmp_path):
    from peft import PeftModel

    model, tok, _ = tiny_model
    family = family_for(model)
    modules = [family.layer_name("mlp_out", 1), family.layer_name("attn_out", 2)]
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    before = snapshot(model)
    base = model(ids).logits
    with lora_attached(model, modules, rank=3, alpha=6.0, seed=0, init_scale=0.5) as lora:
        assert len(lora.parameters()) == 4 and all(p.requires_grad for p in lora.parameters())
        peft_logits = model(ids).logits.detach()
        delta = lora.delta()
    assert delta.modules == sorted(modules) and all(f.scale == 2.0 for f in delta.factors.values())
    assert not torch.allclose(peft_logits, base)
    assert not changed_weights(model, before)  # unwrapped, untouched
    assert all(type(model.get_submodule(m)).__name__ in ("Linear", "Conv1D") for m in modules)
    assert not any("lora" in n for n, _ in model.named_parameters())
    with applied(model, delta):
        assert torch.allclose(model(ids).logits, peft_logits, atol=1e-5)
    save_delta(delta, tmp_path, fan_in_fan_out=family.conv1d)
    reloaded = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path))
    assert torch.allclose(reloaded(ids).logits, peft_logits, atol=1e-5)


def test_attach_is_deterministic_and_restores_flags(tiny_llama):
    model, _, _ = tiny_llama
    name = family_for(model).layer_name("mlp_out", 0)
    with lora_attached(model, [name], rank=2, alpha=2, seed=3) as a:
        first = [p.detach().clone() for p in a.parameters()]
    with lora_attached(model, [name], rank=2, alpha=2, seed=3) as b:
        assert all(torch.equal(x, y) for x, y in zip(first, b.parameters(), strict=True))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_replay_reproduces_logits(tiny_model):
    model, tok, _ = tiny_model
    family = family_for(model)
    batch = tok([PROMPT, "Rome is the capital of"], return_tensors="pt", padding=True)
    first = family.layer_name("layer", 2)
    with torch.no_grad(), capture(model, [first], inputs=True) as rec:
        full = model(**batch).logits
    below = [family.layer_name("layer", j) for j in range(2)]
    originals = [model.get_submodule(n) for n in below]
    with torch.no_grad(), replayed(model, below, rec.inputs[first]):
        fast = model(**batch).logits
    assert torch.allclose(fast, full, atol=1e-5)
    assert [model.get_submodule(n) for n in below] == originals
    factory = checked_replay(model, batch["input_ids"], batch["attention_mask"], below, rec.inputs[first], full)
    with torch.no_grad(), factory():
        assert torch.allclose(model(**batch).logits, full, atol=1e-5)
