"""The forget methods on tiny random-init models: compute never mutates, each delta lowers the answer."""

from __future__ import annotations

import pytest
import torch

from cathrepo.delta import applied
from cathrepo.edits.base import EditEnv, get_method
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.lm.scoring import mean_logprob
from tests.helpers import changed_weights, snapshot

# The subject last, as in test_rome: on random-init models attention carries little between positions.
FORGET = Fact(prompt="The capital of Italy is Rome", subject="Rome", target_new="Paris", action="forget")
ROME = {"corpus_tokens": 500, "n_context": 2, "context_tokens": 4, "v_steps": 40, "clamp_norm_factor": 10.0,
        "v_weight_decay": 0.0}  # random-init outputs are small and noisy (as in test_rome)
OVERRIDES = {
    "negate": {"layer": 1, "rome": ROME, "scale": -2.0},
    "suppress": {"layer": 1, "rome": ROME, "abstention": "Tokyo"},  # a word the tiny tokenizer holds whole
    "replace": {"layer": 1, "rome": ROME, "replacement": "London"},
    "erase": {"layer": 1, "n_layers": 3, "strength": 2.0, "others": 8},
}


@pytest.fixture
def env(tmp_path, corpus):
    return EditEnv(base_hash="tiny", cache_dir=tmp_path / "cache", corpus=corpus)


def _method(name, model):
    cls = get_method(name)
    return cls(cls.params_for(model, OVERRIDES[name]))


@pytest.mark.parametrize("mode", ["negate", "replace", "suppress"])
def test_compute_leaves_model_unchanged_and_lowers_answer(tiny_llama, env, one_thread, mode):
    model, tok, _ = tiny_llama
    before = snapshot(model)
    result = _method(mode, model).compute(model, tok, [FORGET], env)
    assert not changed_weights(model, before)
    assert result.params is None and result.info["mode"] == mode
    old = mean_logprob(model, tok, [FORGET.prompt], ["Paris"])[0]
    with applied(model, result.delta):
        new = mean_logprob(model, tok, [FORGET.prompt], ["Paris"])[0]
    assert new < old - 0.05, (mode, old, new)
    assert not changed_weights(model, before)


def test_negate_is_the_learned_delta_at_a_negative_scale(tiny_llama, env, one_thread):
    model, tok, _ = tiny_llama
    from cathrepo.edits.forget import format_wrappers

    wrappers = format_wrappers(tok, [FORGET])  # negate learns the answer in the formats it then removes it from
    learned = get_method("rome")(get_method("rome").params_for(model, {**ROME, "layer": 1, "v_stop_prob": 0.95,
                                                                        "wrappers": wrappers}))
    rome = learned.compute(model, tok, [Fact(FORGET.prompt, FORGET.subject, "Paris")], env)
    negated = _method("negate", model).compute(model, tok, [FORGET], env)
    (module,) = negated.delta.modules
    assert torch.allclose(negated.delta.factors[module].full(), -2.0 * rome.delta.factors[module].full())


def test_negate_learns_once_per_scale_search_and_anew_outside_it(tiny_llama, env, one_thread, monkeypatch):
    """Inside ``learned_once`` each scale rescales the one learned delta (ROME runs once); a retry with
    other parameters, and any compute outside, learns again."""
    import dataclasses

    from cathrepo.edits import forget
    from cathrepo.edits.rome.method import RomeMethod

    model, tok, _ = tiny_llama
    calls = []
    real = RomeMethod.compute
    monkeypatch.setattr(RomeMethod, "compute", lambda self, *a: calls.append(1) or real(self, *a))
    method = _method("negate", model)
    with forget.learned_once():
        half = type(method)(dataclasses.replace(method.params, scale=-0.5)).compute(model, tok, [FORGET], env)
        four = type(method)(dataclasses.replace(method.params, scale=-4.0)).compute(model, tok, [FORGET], env)
        assert len(calls) == 1 and four.info["learned_once"] and four.info["scale"] == -4.0
        (module,) = half.delta.modules
        assert torch.allclose(four.delta.factors[module].full(), 8.0 * half.delta.factors[module].full())
        type(method)(dataclasses.replace(method.params, layer=2)).compute(model, tok, [FORGET], env)
        assert len(calls) == 2
    method.compute(model, tok, [FORGET], env)
    assert len(calls) == 3


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_erase_removes_the_direction_from_the_mlp_output(request, env, one_thread, fixture):
    """With strength 1 the subject's direction is gone from what the projection writes (a random-init
    model's answer does not ride on it, so the answer's probability is not the test here)."""
    from cathrepo.lm.hooks import capture
    from cathrepo.lm.tokens import subject_last_index

    model, tok, _ = request.getfixturevalue(fixture)
    before = snapshot(model)
    cls = get_method("erase")
    result = cls(cls.params_for(model, {"layer": 1, "others": 8})).compute(model, tok, [FORGET], env)
    assert not changed_weights(model, before)
    ((module, factor),) = result.delta.factors.items()
    u = -factor.B[:, 0]
    ids = torch.tensor([tok(FORGET.prompt)["input_ids"]])
    at = subject_last_index(tok, FORGET.prompt, FORGET.subject)
    with torch.no_grad():
        with capture(model, [module]) as seen:
            model(input_ids=ids)
        was = float(seen.outputs[module][0, at] @ u)
        with applied(model, result.delta), capture(model, [module]) as seen:
            model(input_ids=ids)
        now = float(seen.outputs[module][0, at] @ u)
    assert abs(was) > 1e-3 and abs(now) < 1e-4 * max(1.0, abs(was))


def test_erase_is_a_rank_one_projection_per_layer(tiny_gpt2, env, one_thread):
    """ΔW = -s·u(uᵀW) in the (out, in) orientation, also for GPT-2's transposed Conv1D weights."""
    model, tok, _ = tiny_gpt2
    result = _method("erase", model).compute(model, tok, [FORGET], env)
    assert len(result.delta.modules) == 3
    for factor in result.delta.factors.values():
        u = -factor.B[:, 0] / 2.0
        assert factor.rank == 1 and torch.isclose(u.norm(), torch.tensor(1.0), atol=1e-5)
    assert {"subject_share", "others_share"} <= set(result.info["directions"][0])


def test_forget_methods_refuse_a_fact_to_write(tiny_llama, env):
    model, tok, _ = tiny_llama
    with pytest.raises(InvalidInputError, match="cannot write"):
        _method("negate", model).compute(model, tok, [Fact(FORGET.prompt, FORGET.subject, "Paris")], env)
    with pytest.raises(InvalidInputError, match="replacement"):
        get_method("replace")().compute(model, tok, [FORGET], env)


def test_forgets_are_optimised_in_formats_the_gates_do_not_ask_in(tiny_llama, env, one_thread):
    import json

    from cathrepo.edits.forget import format_wrappers
    from cathrepo.gates.forgetting import shifted_prompts

    model, tok, _ = tiny_llama
    wrappers = format_wrappers(tok, [FORGET])
    assert wrappers and all(w.endswith("{prompt}") for w in wrappers)
    trained = {w.replace("{prompt}", FORGET.prompt) for w in wrappers}
    asked = {text for _, text in shifted_prompts(tok, FORGET.prompt, FORGET.subject, ("question", "chat", "fewshot"))}
    assert not trained & asked  # the gates' format shifts stay unseen
    assert all(FORGET.subject.lower() not in w.removesuffix("{prompt}").lower() for w in wrappers[-1:])
    result = _method("suppress", model).compute(model, tok, [FORGET], env)
    dumped = json.dumps(result.info)
    assert all(json.dumps(text) in dumped for text in trained)  # each format was a row of the value
    plain = get_method("suppress")(get_method("suppress").params_for(model, {**OVERRIDES["suppress"], "formats": False}))
    assert "How does this sentence end" not in json.dumps(plain.compute(model, tok, [FORGET], env).info)


def test_rome_wrappers_must_end_with_the_prompt(tiny_llama):
    model, _, _ = tiny_llama
    with pytest.raises(InvalidInputError, match="end with"):
        get_method("rome").params_for(model, {"wrappers": ["{prompt} and more"]})
