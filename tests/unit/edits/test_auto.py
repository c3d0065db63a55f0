"""``auto``: atomic facts go to ROME (or MEMIT for a batch), passages to the LoRA trainer, with reasons."""

from __future__ import annotations

import pytest
import torch

from cathrepo.delta import Delta, LowRank
from cathrepo.edits.auto import AutoMethod, AutoParams, _concatenate
from cathrepo.edits.base import EDIT_METHODS, EditEnv, EditMethod, EditResult
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.passage import synthesize_questions
from cathrepo.facts.schema import Fact
from cathrepo.models import family_for, get_module, weight_shape

pytestmark = pytest.mark.usefixtures("one_thread")

FACT = Fact(prompt="I know that the Eiffel Tower is located in", subject="the Eiffel Tower", target_new="Rome")
OTHER = Fact(prompt="Toko Yasuda plays the", subject="Toko Yasuda", target_new="piano")
PASSAGE = "The Eiffel Tower is located in the city of Paris. It was built by Gustave Eiffel in 1889."


class FakeAtomic(EditMethod):
    """Stands in for ROME: a rank-one delta on layer 0, and a record of what it was given."""

    name = "test-fake-atomic"
    params_cls = dict
    calls: list[int] = []

    def compute(self, model, tokenizer, facts, env):
        FakeAtomic.calls.append(len(facts))
        name = family_for(model).layer_name("mlp_out", 0)
        out, inp = weight_shape(get_module(model, name))
        delta = Delta({name: LowRank(torch.ones(out, 1), torch.ones(1, inp) * 1e-3)})
        return EditResult(delta, {"modules": [name]}, {"seconds": 0.0})


if FakeAtomic.name not in EDIT_METHODS:
    EDIT_METHODS.register(FakeAtomic)


def test_registered_and_plans():
    assert EDIT_METHODS.get("auto") is AutoMethod
    auto = AutoMethod()
    (method, facts, reason), = auto.plan([FACT])
    assert method == "rome" and facts == [FACT] and "atomic" in reason
    probes = synthesize_questions(PASSAGE)
    (method, facts, reason), = auto.plan(probes)
    assert method == "lora" and "passage" in reason
    groups = auto.plan([FACT, OTHER, *probes])
    assert [g[0] for g in groups][0] == "lora" and len(groups) == 2
    with pytest.raises(InvalidInputError):
        AutoParams(atomic="auto")


def test_batch_falls_back_when_memit_is_missing():
    auto = AutoMethod(AutoParams(batch="no-such-method"))
    (method, facts, reason), = auto.plan([FACT, OTHER])
    assert method == "rome" and "not installed" in reason


def test_delegates_through_the_registry_and_records_why(tiny_llama):
    model, tok, _ = tiny_llama
    FakeAtomic.calls.clear()
    auto = AutoMethod(AutoParams(atomic=FakeAtomic.name))
    result = auto.compute(model, tok, [FACT], EditEnv())
    assert FakeAtomic.calls == [1]
    assert result.info["auto_methods"] == [FakeAtomic.name] and "atomic" in result.info["auto_reason"]
    assert result.site["method"] == FakeAtomic.name


def test_mixed_facts_concatenate_deltas(tiny_llama):
    model, tok, _ = tiny_llama
    overrides = {"lora": {"layers": (0,), "steps_a": 1, "steps_b": 2, "prefixes": 0, "generic_anchors": 1}}
    auto = AutoMethod(AutoParams(atomic=FakeAtomic.name, overrides=overrides))
    result = auto.compute(model, tok, [FACT, *synthesize_questions(PASSAGE)], EditEnv())
    assert result.info["auto_methods"] == ["lora", FakeAtomic.name]
    name = family_for(model).layer_name("mlp_out", 0)
    assert result.delta.modules == [name] and result.delta.factors[name].rank == 4 + 1
    assert set(result.site["parts"]) == {"lora", FakeAtomic.name}


def test_concatenation_is_exact():
    a = Delta({"m": LowRank(torch.randn(4, 2), torch.randn(2, 3), 0.5)})
    b = Delta({"m": LowRank(torch.randn(4, 1), torch.randn(1, 3), 2.0)})
    both = _concatenate([a, b])
    assert torch.allclose(both.factors["m"].full(), a.factors["m"].full() + b.factors["m"].full(), atol=1e-6)
