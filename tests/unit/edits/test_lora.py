"""The LoRA method: params validation, registry, compute leaves the model bit-identical, the result is
a PEFT-loadable Delta with its site, data, losses and attribution summary; passages are accepted."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from cathrepo.delta import applied, save_delta
from cathrepo.edits.base import EDIT_METHODS, EditEnv
from cathrepo.edits.lora import LoraMethod, LoraParams
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.passage import synthesize_questions
from cathrepo.facts.schema import Fact, Neighbor
from cathrepo.models import family_for
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

FACT = Fact(prompt="I know that the Eiffel Tower is located in", subject="the Eiffel Tower",
            target_new="Rome", target_true="Paris",
            neighborhood=(Neighbor("Apple was founded by", "Steve"),))
FAST = dict(steps_a=2, steps_b=4, prefixes=1, template_anchors=1, generic_anchors=1)


def test_registered_and_params_validated():
    assert EDIT_METHODS.get("lora") is LoraMethod and LoraMethod.batched
    for bad in ({"rank": 0}, {"component": "ffn"}, {"attribution": "rome"}, {"match": "all"}, {"layers": ()},
                {"steps_b": 0}, {"lr": 0.0}, {"kl_weight": -1.0}, {"top_k": 0}):
        with pytest.raises(InvalidInputError):
            LoraParams(**bad)
    params = LoraParams(layers=[3, 1])
    assert params.layers == (3, 1) and json.loads(json.dumps(params.to_dict()))["layers"] == [3, 1]
    assert all(f.metadata.get("help") for f in dataclasses.fields(LoraParams))


def test_compute_explicit_layers(tiny_model, tmp_path):
    from peft import PeftModel

    model, tok, _ = tiny_model
    before = snapshot(model)
    family = family_for(model)
    method = LoraMethod(LoraParams(layers=(2, 1), **FAST))
    result = method.compute(model, tok, [FACT], EditEnv(seed=1))
    assert not changed_weights(model, before)
    assert not any("lora" in n for n, _ in model.named_parameters())
    modules = [family.layer_name("mlp_out", 1), family.layer_name("mlp_out", 2)]
    assert result.site["modules"] == modules and result.site["layers"] == [1, 2]
    assert result.delta.modules == sorted(modules) and result.attribution is None
    assert result.info["phase_a"]["steps"] == 2 and 1 <= result.info["phase_b"]["steps"] <= 4
    assert result.info["adapter_bytes"] == result.delta.num_bytes() > 0
    roles = [row["role"] for row in result.data]
    assert roles.count("edit") == 2 and "anchor" in roles
    json.dumps({"info": result.info, "site": result.site, "data": list(result.data)})
    # The stored adapter reloads in plain PEFT and gives the logits apply_delta gives.
    ids = tok(FACT.prompt, return_tensors="pt")["input_ids"]
    save_delta(result.delta, tmp_path, fan_in_fan_out=family.conv1d)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path))
    with applied(model, result.delta):
        assert torch.allclose(model(ids).logits, peft_model(ids).logits, atol=1e-5)


def test_compute_is_deterministic(tiny_llama):
    model, tok, _ = tiny_llama
    method = LoraMethod(LoraParams(layers=(1,), **FAST))
    a = method.compute(model, tok, [FACT], EditEnv(seed=0)).delta
    b = method.compute(model, tok, [FACT], EditEnv(seed=0)).delta
    assert all(torch.equal(a.factors[k].B, b.factors[k].B) for k in a.modules)


@pytest.mark.parametrize("attribution", ["patching", "saliency"])
def test_compute_with_attribution(tiny_llama, attribution):
    model, tok, _ = tiny_llama
    before = snapshot(model)
    method = LoraMethod(LoraParams(attribution=attribution, top_k=2, **FAST))
    result = method.compute(model, tok, [FACT], EditEnv())
    assert result.attribution["method"] == attribution and len(result.attribution["layers"]) == 2
    assert sorted(result.attribution["layers"]) == result.site["layers"]
    assert result.site["chosen_by"] == attribution
    assert not changed_weights(model, before)


def test_layer_window_keeps_attribution_near_the_default_layer(tiny_llama):
    from cathrepo.models import default_edit_layer

    model, tok, _ = tiny_llama
    result = LoraMethod(LoraParams(attribution="saliency", layer_window=0, **FAST)).compute(
        model, tok, [FACT], EditEnv())
    assert result.site["layers"] == [default_edit_layer(model)]
    with pytest.raises(InvalidInputError):
        LoraParams(layer_window=-1)


def test_compute_passage(tiny_llama):
    model, tok, _ = tiny_llama
    probes = synthesize_questions("The Eiffel Tower is located in the city of Paris. It was built by "
                                  "Gustave Eiffel in 1889.")
    result = LoraMethod(LoraParams(layers=(2,), **FAST)).compute(model, tok, probes, EditEnv())
    edits = [row for row in result.data if row["role"] == "edit"]
    assert len(edits) == 2 * len(probes)
    assert all(row["teacher"].startswith("The Eiffel Tower is located") for row in edits)
    assert not any(row.get("source") == "template" for row in result.data)


def test_wrong_layer_is_refused(tiny_llama):
    model, tok, _ = tiny_llama
    with pytest.raises(InvalidInputError, match="Layer 9"):
        LoraMethod(LoraParams(layers=(9,), **FAST)).compute(model, tok, [FACT], EditEnv())
