"""Invariants of the Delta: remove(apply(d)) is the identity, checks refuse bad deltas, PEFT reload agrees."""

from __future__ import annotations

import pytest
import torch

from cathrepo.delta import Delta, LowRank, applied, apply_delta, load_delta, save_delta
from cathrepo.exceptions import DeltaError
from cathrepo.models import family_for, get_module, is_conv1d, weight_shape
from tests.helpers import changed_weights, snapshot


def _random_delta(model, layers=(1, 2), rank=2, seed=0) -> Delta:
    gen = torch.Generator().manual_seed(seed)
    family = family_for(model)
    factors = {}
    for layer in layers:
        name = family.layer_name("mlp_out", layer)
        out, inp = weight_shape(get_module(model, name))
        factors[name] = LowRank(torch.randn(out, rank, generator=gen), torch.randn(rank, inp, generator=gen), 0.5)
    return Delta(factors)


def test_remove_apply_is_identity_bit_for_bit(tiny_model):
    model, _, _ = tiny_model
    before = snapshot(model)
    record = apply_delta(model, _random_delta(model))
    assert changed_weights(model, before), "applying a delta must change some weight"
    record.remove(model)
    assert not changed_weights(model, before)


def test_applied_changes_logits_and_restores(tiny_model):
    model, tok, _ = tiny_model
    ids = tok("The Eiffel Tower is located in", return_tensors="pt")["input_ids"]
    base = model(ids).logits
    with applied(model, _random_delta(model)):
        edited = model(ids).logits
    assert not torch.allclose(base, edited)
    assert torch.equal(model(ids).logits, base)


def test_wrong_shape_is_refused_before_any_change(tiny_llama):
    model, _, _ = tiny_llama
    before = snapshot(model)
    good = _random_delta(model, layers=(0,))
    bad = Delta({**good.factors, "model.layers.1.mlp.down_proj": LowRank(torch.ones(3, 1), torch.ones(1, 5))})
    with pytest.raises(DeltaError, match="weight is"):
        apply_delta(model, bad)
    assert not changed_weights(model, before)


def test_nonfinite_and_unknown_module_are_refused(tiny_llama):
    model, _, _ = tiny_llama
    good = _random_delta(model, layers=(0,))
    name = next(iter(good.factors))
    nan = LowRank(good.factors[name].B * float("nan"), good.factors[name].A)
    with pytest.raises(DeltaError, match="NaN"):
        apply_delta(model, Delta({name: nan}))
    with pytest.raises(DeltaError, match="does not have"):
        apply_delta(model, Delta({"model.layers.99.mlp.down_proj": good.factors[name]}))


def test_a_stack_is_the_sum_of_its_deltas_applied_at_once_and_removed_bit_for_bit(tiny_model):
    from cathrepo.delta import apply_deltas

    model, _, _ = tiny_model
    before = snapshot(model)
    stack = [_random_delta(model, seed=i) for i in range(5)] + [_random_delta(model, layers=(0,), seed=9)]
    one_by_one = [apply_delta(model, d) for d in stack]
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for record in reversed(one_by_one):
        record.remove(model)
    assert not changed_weights(model, before)
    record = apply_deltas(model, stack)
    for name, value in model.state_dict().items():
        assert torch.allclose(value, expected[name], rtol=1e-5, atol=1e-5), name
    record.remove(model)
    assert not changed_weights(model, before)
    # a module one delta touches gets exactly W + s·B@A
    originals = {name: get_module(model, name).weight.detach().clone() for name in stack[0].factors}
    record = apply_deltas(model, [stack[0]])
    try:
        for name, factor in stack[0].factors.items():
            update = factor.full().T if is_conv1d(get_module(model, name)) else factor.full()
            assert torch.equal(get_module(model, name).weight, originals[name] + update)
    finally:
        record.remove(model)


def test_a_bad_delta_anywhere_in_a_stack_leaves_the_model_untouched(tiny_llama):
    from cathrepo.delta import apply_deltas

    model, _, _ = tiny_llama
    before = snapshot(model)
    good = _random_delta(model, layers=(0,))
    name = next(iter(good.factors))
    nan = Delta({name: LowRank(good.factors[name].B * float("nan"), good.factors[name].A)})
    with pytest.raises(DeltaError, match="NaN"):
        apply_deltas(model, [good, _random_delta(model, seed=3), nan])
    assert not changed_weights(model, before)


def test_factors_must_chain():
    with pytest.raises(DeltaError):
        LowRank(torch.ones(4, 2), torch.ones(3, 5))


def test_save_load_roundtrip(tiny_model, tmp_path):
    model, _, _ = tiny_model
    delta = _random_delta(model)
    save_delta(delta, tmp_path, fan_in_fan_out=family_for(model).conv1d)
    back = load_delta(tmp_path)
    assert back.modules == delta.modules
    for name in delta:
        assert torch.allclose(back.factors[name].full(), delta.factors[name].full(), atol=1e-6)


def test_mixed_ranks_roundtrip_through_patterns(tiny_llama, tmp_path):
    model, _, _ = tiny_llama
    d1 = _random_delta(model, layers=(0,), rank=1)
    d3 = _random_delta(model, layers=(2,), rank=3, seed=1)
    delta = Delta({**d1.factors, **d3.factors})
    save_delta(delta, tmp_path)
    back = load_delta(tmp_path)
    assert {n: f.rank for n, f in back.factors.items()} == {n: f.rank for n, f in delta.factors.items()}
    for name in delta:
        assert torch.allclose(back.factors[name].full(), delta.factors[name].full(), atol=1e-6)


def test_peft_from_pretrained_matches_merged_logits(tiny_model, tmp_path):
    """Any edit loads with plain peft.PeftModel.from_pretrained and reproduces the merged model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok, path = tiny_model
    delta = _random_delta(model)
    save_delta(delta, tmp_path / "delta", fan_in_fan_out=family_for(model).conv1d)
    ids = tok("The mother tongue of Danielle Darrieux is", return_tensors="pt")["input_ids"]
    with applied(model, delta):
        merged = model(ids).logits
    base = AutoModelForCausalLM.from_pretrained(path)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "delta"))
    peft_model.eval()
    with torch.no_grad():
        via_peft = peft_model(input_ids=ids).logits
    assert torch.allclose(merged, via_peft, atol=1e-4)
    assert not torch.allclose(merged, model(ids).logits, atol=1e-4)
