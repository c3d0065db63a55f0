"""ROME on tiny random-init models: compute never mutates, the update hits k* exactly, the edit works."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cathrepo.delta import applied
from cathrepo.edits.base import EditEnv, get_method
from cathrepo.edits.rome.key import key_vector
from cathrepo.edits.rome.rows import batch_rows, prefix_cache, read_logprobs
from cathrepo.edits.rome.value import working_copy
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.lm.scoring import hidden_and_head, mean_logprob
from cathrepo.lm.tokens import continuation_ids
from cathrepo.models import cache_kwargs, family_for, get_module
from tests.helpers import changed_weights, snapshot

# On random-init models attention barely carries information between positions, so the tiny-model
# tests put the subject last: δ then acts on the position that predicts the target.
FACT = Fact(prompt="The capital of Italy is Rome", subject="Rome", target_new="Paris", target_true="Tokyo")


@pytest.fixture
def env(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["The city of Paris is in France.", "Rome is the capital of Italy."] * 30))
    return EditEnv(base_hash="tiny", cache_dir=tmp_path / "cache", corpus=corpus)


def _params(model, **kw):
    base = {"layer": 1, "corpus_tokens": 500, "n_context": 2, "context_tokens": 4, "v_steps": 40,
            "clamp_norm_factor": 10.0, "v_weight_decay": 0.0}  # random-init outputs are small and noisy
    return get_method("rome").params_for(model, {**base, **kw})


def test_compute_leaves_model_bit_identical(tiny_model, env):
    model, tok, _ = tiny_model
    before = snapshot(model)
    get_method("rome")(_params(model)).compute(model, tok, [FACT], env)
    assert not changed_weights(model, before)


def test_edit_makes_target_preferred(tiny_model, env):
    model, tok, _ = tiny_model
    result = get_method("rome")(_params(model)).compute(model, tok, [FACT], env)
    (module,) = result.delta.modules
    assert result.delta.factors[module].rank == 1
    old = mean_logprob(model, tok, [FACT.prompt] * 2, ["Paris", "Tokyo"])
    with applied(model, result.delta):
        new = mean_logprob(model, tok, [FACT.prompt] * 2, ["Paris", "Tokyo"])
    assert new[0] > old[0] + 1.0
    assert new[0] > new[1]
    assert result.info["facts"][0]["nll_end"] < result.info["facts"][0]["nll_start"]


def test_update_moves_output_at_key_by_delta(tiny_llama, env):
    """ΔW k* equals the optimised δ: the defining property of the rank-one update."""
    model, tok, _ = tiny_llama
    method = get_method("rome")(_params(model, n_context=0))
    result = method.compute(model, tok, [FACT], env)
    (module,) = result.delta.modules
    factor = result.delta.factors[module]
    key = key_vector(model, tok, module, FACT.prompt, FACT.subject, [""])
    moved = factor.full() @ key
    assert torch.allclose(moved, factor.B[:, 0] * float(factor.A[0] @ key), atol=1e-5)
    w = get_module(model, module).weight.detach().clone()  # (out, in): a Llama projection
    with applied(model, result.delta):
        after = get_module(model, module).weight @ key
    assert torch.allclose(after - w @ key, moved, atol=1e-4)


def test_prefix_cache_matches_full_forward(tiny_model):
    """The KV-cached split forward gives the same target log-probs as one full forward."""
    model, tok, _ = tiny_model
    target = continuation_ids(tok, FACT.target_new)
    prefixes = ["", "I went home. "]
    b = batch_rows(tok, FACT, target, prefixes, [FACT.prompt])
    cache = prefix_cache(model, b)
    with torch.no_grad():
        split = model(input_ids=b["suffix_ids"], attention_mask=b["mask"], position_ids=b["suffix_pos"],
                      **cache_kwargs(model, cache)).logits.log_softmax(-1)
    got = split[b["rows"], b["positions"], b["tokens"]]
    expected = []
    for prefix in prefixes:
        ids = tok(prefix + FACT.prompt)["input_ids"]
        full = torch.tensor([ids + target[:-1]])
        with torch.no_grad():
            logp = model(input_ids=full).logits.log_softmax(-1)[0]
        expected += [logp[len(ids) - 1 + j, t] for j, t in enumerate(target)]
    assert torch.allclose(got, torch.stack(expected), atol=1e-4)


def test_head_only_where_the_loss_reads_matches_the_full_model(tiny_model):
    """Body then head at the loss's positions gives the full model's log-probs (incl. the essence row)."""
    model, tok, _ = tiny_model
    b = batch_rows(tok, FACT, continuation_ids(tok, FACT.target_new), ["", "I went home. "], [FACT.prompt])
    cache = prefix_cache(model, b)
    split = hidden_and_head(model)
    assert split is not None
    with torch.no_grad():
        fast = read_logprobs(model, split, b, cache)
        full = read_logprobs(model, None, b, cache)
    assert fast.shape == (len(b["tokens"]) + 1, full.shape[1])
    assert torch.allclose(fast, full, atol=1e-4)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_value_precision_keeps_the_model_and_still_edits(tiny_llama, env, precision):
    model, tok, _ = tiny_llama
    copy_ = working_copy(model, precision)
    assert (copy_ is model) == (precision == "float32")
    assert next(model.parameters()).dtype == torch.float32
    result = get_method("rome")(_params(model, precision=precision)).compute(model, tok, [FACT], env)
    with applied(model, result.delta):
        new = mean_logprob(model, tok, [FACT.prompt] * 2, ["Paris", "Tokyo"])
    assert new[0] > new[1]
    with pytest.raises(InvalidInputError, match="precision"):
        _params(model, precision="fp8")


def test_several_facts_concatenate_ranks(tiny_llama, env):
    model, tok, _ = tiny_llama
    second = Fact(prompt="Rome is the capital of", subject="Rome", target_new="France", target_true="Italy")
    result = get_method("rome")(_params(model)).compute(model, tok, [FACT, second], env)
    (module,) = result.delta.modules
    assert result.delta.factors[module].rank == 2
    assert len(result.info["facts"]) == 2


def test_bad_inputs_are_refused(tiny_llama, env):
    model, tok, _ = tiny_llama
    with pytest.raises(InvalidInputError, match="layer 9"):
        get_method("rome")(_params(model, layer=9)).compute(model, tok, [FACT], env)
    with pytest.raises(InvalidInputError, match="Unknown rome parameter"):
        get_method("rome").params_for(model, {"layr": 1})
    with pytest.raises(InvalidInputError, match="tokenizes to nothing"):
        bad = Fact(prompt=FACT.prompt, subject=FACT.subject, target_new=" x ")
        object.__setattr__(bad, "target_new", "   ")
        get_method("rome")(_params(model)).compute(model, tok, [bad], env)


def test_unknown_method_suggests_close_name():
    from cathrepo.exceptions import UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean: rome"):
        get_method("rom")


def test_value_through_weight_is_what_the_edited_model_gives(tiny_llama, env):
    """With ``through_weight`` the optimisation sees δ as the shipped weight delivers it: the target's
    log-probability it stopped at is the edited model's (the subject opens the prompt and there are no
    context prefixes, so no position before the subject's last token is left out)."""
    model, tok, _ = tiny_llama
    subject = next(w for w in ("Rome", "Paris", "Italy", "France", "The") if len(tok(w)["input_ids"]) == 1)
    fact = Fact(prompt=f"{subject} is the capital of", subject=subject, target_new="Paris", target_true="Tokyo")
    result = get_method("rome")(_params(model, n_context=0, through_weight=True, v_steps=5)).compute(
        model, tok, [fact], env)
    seen = -result.info["facts"][0]["nll_end"]
    with applied(model, result.delta):
        (shipped,) = mean_logprob(model, tok, [fact.prompt], ["Paris"])
    assert result.info["facts"][0]["steps"] > 0
    assert shipped == pytest.approx(seen, abs=2e-3)


def test_stop_at_top1_waits_until_greedy_generation_starts_with_the_target(tiny_llama, env):
    """A low length-normalised bar is reached at once; ``v_stop_top1`` keeps optimising until the
    target's first token is the edited model's most likely next token."""
    model, tok, _ = tiny_llama
    fact = Fact(prompt=FACT.prompt, subject=FACT.subject, target_new="Tokyo London", target_true="Paris")
    first = continuation_ids(tok, fact.target_new)[0]
    runs = {}
    for top1 in (False, True):
        result = get_method("rome")(_params(model, n_context=0, v_stop_prob=1e-9, v_stop_top1=top1, v_solver="adam",
                                            v_lr=0.05, v_steps=200)).compute(model, tok, [fact], env)
        with applied(model, result.delta), torch.no_grad():
            logits = model(**tok(fact.prompt, return_tensors="pt")).logits[0, -1]
        runs[top1] = (result.info["facts"][0]["steps"], int(logits.argmax()) == first)
    assert runs[False] == (0, False)  # the bar was met before any step: no edit at all
    assert runs[True][0] > 0 and runs[True][1]


def test_key_phrasings_averages_the_key_over_the_wordings_and_changes_nothing_without_them(tiny_llama, env):
    model, tok, _ = tiny_llama
    fact = Fact(prompt="Rome is located in", subject="Rome", target_new="Paris", target_true="Italy",
                relation_id="P17")
    deltas = {}
    for phrasings, averaged in ((0, False), (0, True), (2, False), (2, True)):
        method = get_method("rome")(_params(model, n_context=0, v_steps=3, phrasings=phrasings,
                                            key_phrasings=averaged))
        deltas[phrasings, averaged] = method.compute(model, tok, [fact], env).delta.factors
    (module,) = deltas[0, False]
    assert torch.equal(deltas[0, True][module].A, deltas[0, False][module].A)  # one wording: the same key
    assert not torch.allclose(deltas[2, True][module].A, deltas[2, False][module].A)  # u follows the average


def test_phrasing_prefixes_limits_the_rows_of_the_phrasings_only():
    from cathrepo.edits.rome.rows import rewrite_rows

    prefixes, prompts = ["", "A. ", "B. "], ["P", "Q", "R"]
    assert rewrite_rows(prefixes, prompts) == ["P", "A. P", "B. P", "Q", "A. Q", "B. Q", "R", "A. R", "B. R"]
    assert rewrite_rows(prefixes, prompts, 0) == ["P", "A. P", "B. P", "Q", "R"]
    assert rewrite_rows(prefixes, prompts, 1) == ["P", "A. P", "B. P", "Q", "A. Q", "R", "A. R"]
    assert rewrite_rows(prefixes, prompts, 9) == rewrite_rows(prefixes, prompts)
    with pytest.raises(InvalidInputError, match="phrasing_prefixes"):
        get_method("rome").params_cls(phrasing_prefixes=-2)


def test_training_data_records_the_rows_the_value_was_optimised_on(tiny_llama, env):
    model, tok, _ = tiny_llama
    fact = Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux",
                target_new="English", target_true="French", relation_id="P103")
    result = get_method("rome")(_params(model, n_context=2, v_steps=2, phrasings=2, phrasing_prefixes=0)).compute(
        model, tok, [fact], env)
    rewrite = [row["prompt"] for row in result.data if row["role"] == "rewrite"]
    phrasings = result.info["facts"][0]["phrasings"]
    assert phrasings and rewrite[3:] == phrasings  # the prompt under 3 prefixes, each phrasing bare
    assert rewrite[0] == fact.prompt and all(r.endswith(fact.prompt) for r in rewrite[:3])


def test_stop_rule_judges_the_phrasings_only_with_phrasing_stop():
    from cathrepo.edits.rome.rows import stop_reached

    params = get_method("rome").params_cls
    rows = [math.log(0.6), math.log(0.7), math.log(0.1)]  # the prompt under two prefixes, then a phrasing
    assert not stop_reached(params(v_stop_prob=0.5, phrasing_stop=True), rows, [True] * 3, 1.0, 2)
    assert stop_reached(params(v_stop_prob=0.5, phrasing_stop=False), rows, [True] * 3, 1.0, 2)
    assert not stop_reached(params(v_stop_prob=0.5, phrasing_stop=False, v_stop_top1=True, v_solver="adam"), rows,
                            [True, False, True], 1.0, 2)
    assert stop_reached(params(v_stop_prob=0.5, phrasing_stop=False, v_stop_top1=True, v_solver="adam"), rows,
                        [True, True, False], 1.0, 2)
    assert not stop_reached(params(v_stop_prob=0.5), rows, [True] * 3, 1.0, 2)  # the default: phrasings too
    assert stop_reached(params(v_stop_prob=0.0, v_stop_nll=0.05), rows, [False] * 3, 0.01, 2)
    assert not stop_reached(params(v_stop_prob=0.0, v_stop_nll=0.05), rows, [True] * 3, 0.5, 2)


def test_after_kl_holds_what_follows_the_stated_answer(tiny_llama, env):
    """``after_kl`` keeps the next-token distribution after '{prompt} {target}' closer to the unedited
    model's (the edit should not make the model say the target again)."""
    model, tok, _ = tiny_llama
    stated_text = f"{FACT.prompt} {FACT.target_new}"

    def after_dist():
        with torch.no_grad():
            return model(**tok(stated_text, return_tensors="pt")).logits[0, -1].log_softmax(-1)

    base = after_dist()
    kls = {}
    for weight in (0.0, 20.0):
        result = get_method("rome")(_params(model, n_context=0, after_kl=weight, v_steps=30,
                                                    v_solver="adam")).compute(
            model, tok, [FACT], env)
        with applied(model, result.delta):
            kls[weight] = float(torch.nn.functional.kl_div(after_dist(), base, log_target=True, reduction="sum"))
    assert kls[20.0] < kls[0.0]


def test_least_norm_meets_every_constraint_with_the_smallest_change():
    """The dual solve gives the pseudo-inverse answer when every constraint binds, and leaves out
    constraints that are already met (a row needing nothing moves nothing)."""
    from cathrepo.edits.rome.min_norm import least_norm as _least_norm

    gen = torch.Generator().manual_seed(0)
    jac = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    need = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    x = _least_norm(jac, need)
    assert torch.allclose(jac @ x, need, atol=1e-8)
    assert torch.allclose(x, torch.linalg.pinv(jac) @ need, atol=1e-8)
    slack = torch.tensor([1.0, -5.0, 0.5], dtype=torch.float64)  # the second row is far above its bar
    y = _least_norm(jac, slack)
    assert (jac @ y >= slack - 1e-8).all()
    keep = [0, 2]
    assert torch.allclose(y, torch.linalg.pinv(jac[keep]) @ slack[keep], atol=1e-8)
    assert _least_norm(jac, -torch.ones(3, dtype=torch.float64)).abs().max() == 0


def test_min_norm_solver_stops_at_the_bar_with_a_smaller_value_than_adam(tiny_llama, env):
    """``v_solver`` min_norm meets the same stopping rule in a few passes, and the model it ships gives
    the target the bar's probability; its δ is no longer than Adam's, which walks past the bar."""
    model, tok, _ = tiny_llama
    subject = next(w for w in ("Rome", "Paris", "Italy", "France", "The") if len(tok(w)["input_ids"]) == 1)
    fact = Fact(prompt=f"{subject} is the capital of", subject=subject, target_new="Paris", target_true="Tokyo")
    runs = {}
    for solver in ("adam", "min_norm"):
        result = get_method("rome")(_params(model, n_context=0, v_stop_prob=0.3, v_solver=solver, v_lr=0.2,
                                            v_steps=200)).compute(model, tok, [fact], env)
        info = result.info["facts"][0]
        with applied(model, result.delta):
            (shipped,) = mean_logprob(model, tok, [fact.prompt], ["Paris"])
        assert info["stopped"] and shipped >= math.log(0.3) - 2e-3
        runs[solver] = info
    assert runs["min_norm"]["steps"] < runs["adam"]["steps"]
    assert runs["min_norm"]["delta_norm_ratio"] <= runs["adam"]["delta_norm_ratio"] + 1e-6


def test_min_norm_refuses_the_top1_rule(tiny_llama):
    model, _, _ = tiny_llama
    with pytest.raises(InvalidInputError, match="v_stop_top1"):
        _params(model, v_solver="min_norm", v_stop_top1=True)
    with pytest.raises(InvalidInputError, match="v_solver"):
        _params(model, v_solver="newton")


def test_min_norm_lets_the_phrasings_go_when_the_norm_bound_cannot_hold_them(tiny_llama, env):
    """With a norm bound too tight for every phrasing to reach the bar, min_norm starts again on the
    prompt's rows alone (``relaxed``) instead of spending its passes at the bound; with room it never does."""
    import json
    from pathlib import Path

    from cathrepo.facts.schema import parse_records

    model, tok, _ = tiny_llama
    record = json.loads((Path(__file__).parents[2] / "data" / "counterfact-sample.json").read_text())[0]
    (fact,) = parse_records([record])
    infos = {}
    for bound in (0.05, 50.0):
        result = get_method("rome")(_params(model, clamp_norm_factor=bound, v_stop_prob=0.05, phrasings=3,
                                            phrasing_stop=True)).compute(model, tok, [fact], env)
        infos[bound] = result.info["facts"][0]
        assert infos[bound]["phrasings"] and infos[bound]["delta_norm_ratio"] <= bound + 1e-4
    assert infos[0.05]["relaxed"]
    assert not infos[50.0]["relaxed"]


def test_layers_below_the_edit_run_once_and_the_value_is_the_same(tiny_model, env, monkeypatch):
    """The value's passes replay the layers under the edited one (their rows and prefix cache never
    change, δ enters above them): those layers run in the first pass only, and δ is bit for bit what
    running every layer in every pass gives, on each family's layout."""
    import cathrepo.edits.rome.value as value
    from cathrepo.lm.replay import layers_below

    model, tok, _ = tiny_model
    params = _params(model, layer=2, v_stop_prob=0.9, v_passes=6)
    below = layers_below(model, family_for(model).layer_name(params.module, 2))
    assert below == [family_for(model).layer_name("layer", i) for i in (0, 1)]
    get_method("rome")(params).compute(model, tok, [FACT], env)  # statistics and prefixes cached for both runs
    runs = {}
    for replay in (True, False):
        if not replay:
            monkeypatch.setattr(value, "layers_below", lambda model, module: [])
        calls: list[int] = []
        inner = get_module(model, family_for(model).layer_name("attn", 0))  # runs only when layer 0 does
        handle = inner.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        try:
            result = get_method("rome")(params).compute(model, tok, [FACT], env)
        finally:
            handle.remove()
        runs[replay] = (result, len(calls))
    (replayed, calls_replayed), (full, calls_full) = runs[True], runs[False]
    passes = replayed.info["facts"][0]["steps"] + 1
    assert passes >= 3 and full.info["facts"][0]["steps"] + 1 == passes
    assert calls_full - calls_replayed == passes - 1  # everything else (statistics, keys, prefixes) as before
    (name,) = replayed.delta.modules
    assert torch.equal(replayed.delta.factors[name].B, full.delta.factors[name].B)
    assert torch.equal(replayed.delta.factors[name].A, full.delta.factors[name].A)


def test_first_token_bar_makes_the_target_the_greedy_start(tiny_llama, env):
    """A length-normalised bar can hold while the target's first token is not the model's next token;
    ``v_stop_first`` (min_norm aims each step at it) keeps stepping until the first token has that
    probability."""
    model, tok, _ = tiny_llama
    fact = Fact(prompt=FACT.prompt, subject=FACT.subject, target_new="Tokyo London", target_true="Paris")
    first = continuation_ids(tok, fact.target_new)[0]
    runs = {}
    for bar in (0.0, 0.3):
        result = get_method("rome")(_params(model, n_context=0, v_stop_prob=0.01, v_stop_first=bar,
                                            v_passes=60)).compute(
            model, tok, [fact], env)
        with applied(model, result.delta), torch.no_grad():
            logp = model(**tok(fact.prompt, return_tensors="pt")).logits[0, -1].log_softmax(-1)
        runs[bar] = (result.info["facts"][0]["stopped"], float(logp[first]))
    # the solver reads the prompt's earlier positions unedited; the shipped weight moves them a little too
    assert runs[0.3][0] and runs[0.3][1] >= math.log(0.3) - 0.05
    assert runs[0.0][1] < math.log(0.3) - 0.5  # the length-normalised rule alone stopped well short of it


def test_least_norm_soft_rows_give_way_where_the_constraints_cannot_all_hold():
    """A row with a ridge is soft: against a hard row it contradicts, the hard row is met and the soft
    one falls short by ridge · λ, instead of the dual running off to infinity."""
    from cathrepo.edits.rome.min_norm import least_norm as _least_norm

    g = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64)
    jac = torch.cat([g, -g])  # g·x ≥ 1 and g·x ≤ -1 cannot both hold
    need = torch.tensor([1.0, 1.0], dtype=torch.float64)
    x = _least_norm(jac, need, torch.tensor([0.0, 0.5], dtype=torch.float64))
    assert x.isfinite().all()
    assert float(g @ x) >= 1 - 1e-6  # the hard row holds
    feasible = torch.tensor([1.0, -3.0], dtype=torch.float64)  # both can hold: the ridge changes nothing
    assert torch.allclose(_least_norm(jac, feasible, torch.tensor([0.0, 0.5], dtype=torch.float64)),
                          _least_norm(jac, feasible), atol=1e-8)


def test_context_cap_holds_the_target_down_after_other_subjects(tiny_llama, env):
    """``context_cap`` (min_norm) bounds how far the new target rises after another subject's prompt read
    after the edited sentence: the shipped edit raises it less than without the cap, and still meets the bar."""
    from cathrepo.edits.rome.protect import context_prompts
    from cathrepo.facts.probes import load_known_facts

    model, tok, _ = tiny_llama
    first = continuation_ids(tok, FACT.target_new)[0]
    texts = [t for t, _ in context_prompts(FACT, load_known_facts(part="protect"), 3)]

    def target_lp():
        with torch.no_grad():
            enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
            return model(**enc).logits[:, -1].log_softmax(-1)[:, first]

    base = target_lp()
    rises = {}
    for cap in (0.0, 0.05):
        result = get_method("rome")(_params(model, n_context=0, v_stop_prob=0.3, context_cap=cap,
                                            context_subjects=3, v_passes=40)).compute(model, tok, [FACT], env)
        with applied(model, result.delta):
            rises[cap] = float((target_lp() - base).max())
            (shipped,) = mean_logprob(model, tok, [FACT.prompt], [FACT.target_new])
        assert result.info["facts"][0]["stopped"] and shipped >= math.log(0.3) - 0.05
    assert rises[0.05] < rises[0.0]


def test_after_cap_holds_down_the_target_right_after_it_is_said(tiny_llama, env):
    """``after_cap`` (min_norm) bounds the rise of the target as the next word after '{prompt} {target}'
    (the edit that makes the model repeat its answer), and the edit still meets the bar."""
    model, tok, _ = tiny_llama
    first = continuation_ids(tok, FACT.target_new)[0]
    stated_text = f"{FACT.prompt} {FACT.target_new}"

    def again():
        with torch.no_grad():
            return float(model(**tok(stated_text, return_tensors="pt")).logits[0, -1].log_softmax(-1)[first])

    base = again()
    rises = {}
    for cap in (0.0, 0.05):
        result = get_method("rome")(_params(model, n_context=0, v_stop_prob=0.3, after_cap=cap,
                                            v_passes=40)).compute(model, tok, [FACT], env)
        with applied(model, result.delta):
            rises[cap] = again() - base
            (shipped,) = mean_logprob(model, tok, [FACT.prompt], [FACT.target_new])
        assert result.info["facts"][0]["stopped"] and shipped >= math.log(0.3) - 0.05
    assert rises[0.05] < rises[0.0] and rises[0.05] < 0.5


def test_update_direction_holds_the_kept_keys_and_still_reads_the_new_one():
    from cathrepo.edits.rome.key import update_direction

    gen = torch.Generator().manual_seed(0)
    d = 32
    x = torch.randn(200, d, generator=gen)
    cov = x.T @ x / 200
    key, kept = torch.randn(d, generator=gen), torch.randn(5, d, generator=gen)
    free = update_direction(cov, key, 0.01)
    held = update_direction(cov, key, 0.01, kept=kept)
    assert (free @ kept.T).abs().max() > 0.05  # the unconstrained direction reads the other keys
    assert (held @ kept.T).abs().max() < 1e-3 * abs(float(held @ key))  # held: they read (almost) nothing
    assert float(held @ key) > 0
    assert torch.equal(update_direction(cov, key, 0.01, kept=torch.zeros(0, d)), free)


def test_keep_active_leaves_an_earlier_edit_where_it_was(tiny_llama, env):
    model, tok, _ = tiny_llama
    earlier = Fact(prompt="The capital of Spain is Madrid", subject="Madrid", target_new="Paris", target_true="Tokyo")
    method = get_method("rome")
    first = method(_params(model)).compute(model, tok, [earlier], env).delta
    module = next(iter(first.modules))
    kept_env = EditEnv(base_hash="tiny", cache_dir=env.cache_dir, corpus=env.corpus,
                       kept=((earlier.prompt, earlier.subject), (FACT.prompt, "Rome")))
    with applied(model, first):
        key = key_vector(model, tok, module, earlier.prompt, earlier.subject, [""])
        held = method(_params(model)).compute(model, tok, [FACT], kept_env)
        free = method(_params(model, keep_active=False)).compute(model, tok, [FACT], kept_env)
    # the earlier edit's key (the bare prompt) goes through the held update untouched; Rome's own earlier
    # prompt is the same subject and is not held (it would cancel the edit)
    assert held.info["facts"][0]["kept_keys"] == 1
    moved = {name: (d.factors[module].A.float() @ key).abs().item() for name, d in (("held", held.delta),
                                                                                 ("free", free.delta))}
    assert moved["held"] < 1e-3 * moved["free"]


def test_cached_keys_are_the_keys_and_are_read_back_instead_of_recomputed(tiny_llama, tmp_path, monkeypatch):
    from cathrepo.edits.rome import protect

    model, tok, _ = tiny_llama
    module = family_for(model).layer_name("mlp_out", 1)
    pairs = [("The capital of Spain is Madrid", "Madrid"), ("Anna works as a", "Anna")]
    path = tmp_path / "kept" / "state.safetensors"
    fresh = protect.subject_keys(model, tok, module, pairs)
    assert torch.equal(protect.cached_subject_keys(model, tok, module, pairs, path=path), fresh)
    assert path.is_file()
    computed = []
    real = protect.subject_keys
    monkeypatch.setattr(protect, "subject_keys", lambda m, t, mod, p: computed.append(list(p)) or real(m, t, mod, p))
    more = [*pairs, ("Ben is a citizen of", "Ben")]
    again = protect.cached_subject_keys(model, tok, module, more, path=path)
    assert computed == [[("Ben is a citizen of", "Ben")]]  # only the new pair ran through the model
    assert torch.equal(again[:2], fresh)
    path.write_bytes(b"not a safetensors file")  # a damaged cache is recomputed, not trusted
    assert torch.equal(protect.cached_subject_keys(model, tok, module, pairs, path=path), fresh)


def test_the_key_state_changes_with_a_delta_below_the_module_and_not_at_or_above_it(tiny_llama):
    from cathrepo.delta import Delta, LowRank
    from cathrepo.edits.rome.protect import input_state_key

    model, _, _ = tiny_llama
    family = family_for(model)
    module = family.layer_name("mlp_out", 1)

    def delta_at(layer: int) -> Delta:
        name = family.layer_name("mlp_out", layer)
        out, inp = get_module(model, name).weight.shape
        return Delta({name: LowRank(torch.ones(out, 1), torch.ones(1, inp))})

    bare = input_state_key(model, "tiny", (), module)
    assert input_state_key(model, "tiny", (delta_at(1), delta_at(2)), module) == bare
    assert input_state_key(model, "tiny", (delta_at(0),), module) != bare
    assert input_state_key(model, "other", (), module) != bare


def test_the_active_edits_keys_are_cached_per_state_and_the_edit_is_the_same(tiny_llama, env):
    model, tok, _ = tiny_llama
    kept = (("The capital of Spain is Madrid", "Madrid"), ("Anna works as a", "Anna"))
    method = get_method("rome")
    plain = method(_params(model)).compute(model, tok, [FACT], dataclasses.replace(env, kept=kept))
    cached_env = dataclasses.replace(env, kept=kept, active=())
    first = method(_params(model)).compute(model, tok, [FACT], cached_env)
    files = list(env.cache_dir.rglob("kept/*.safetensors"))
    assert len(files) == 1
    second = method(_params(model)).compute(model, tok, [FACT], cached_env)
    for result in (first, second):
        for name, factor in plain.delta.factors.items():
            assert torch.allclose(result.delta.factors[name].A, factor.A, atol=1e-6)
            assert torch.allclose(result.delta.factors[name].B, factor.B, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("solver", ["min_norm", "adam"])
def test_away_prob_pushes_the_old_answer_down_while_the_target_still_rises(tiny_llama, env, solver):
    """``away_prob`` bounds the old answer's (``target_true``) first-token probability on every judged row:
    the edit stops only once the old answer is at most that likely, a bar that teaching the target alone
    does not reach, and the target still meets its own bar."""
    model, tok, _ = tiny_llama
    old = continuation_ids(tok, FACT.target_true)[0]

    def old_prob():
        with torch.no_grad():
            return float(model(**tok(FACT.prompt, return_tensors="pt")).logits[0, -1].softmax(-1)[old])

    base = old_prob()
    after, stopped = {}, {}
    for away in (0.0, base / 20):
        extra = {"v_steps": 200, "v_lr": 0.1} if solver == "adam" else {"v_passes": 60}
        result = get_method("rome")(_params(model, n_context=0, v_stop_prob=0.05, v_solver=solver, phrasings=0,
                                            away_prob=away, **extra)).compute(model, tok, [FACT], env)
        stopped[away] = result.info["facts"][0]["stopped"]
        with applied(model, result.delta):
            after[away] = old_prob()
            (shipped,) = mean_logprob(model, tok, [FACT.prompt], [FACT.target_new])
        assert shipped >= math.log(0.05) - 0.1
    pushed = base / 20
    assert stopped[pushed] and after[pushed] <= pushed * 1.1  # the shipped weight reads the prompt as δ did, nearly
    assert after[0.0] > pushed * 2  # the target's bar alone left the old answer far more likely


def test_away_prob_is_off_when_the_old_answer_starts_like_the_target(tiny_llama):
    from cathrepo.edits.rome.rows import away_token

    model, tok, _ = tiny_llama
    ids = continuation_ids(tok, "Paris")
    assert away_token(tok, dataclasses.replace(FACT, target_true="Paris France"), ids, 0.01) is None
    assert away_token(tok, FACT, ids, 0.0) is None
    assert away_token(tok, FACT, ids, 0.01) == continuation_ids(tok, "Tokyo")[0]
    with pytest.raises(InvalidInputError):
        _params(model, away_prob=1.0)


def test_a_forgets_formats_stay_judged_when_the_phrasings_are_let_go(tiny_llama, env, monkeypatch):
    """The formats (``wrappers``) come first among the phrasings and count as the prompt's rows
    (``n_prompt``), so when min_norm lets the phrasings go the formats are still held to the bar."""
    from cathrepo.edits.rome import value as value_mod
    from cathrepo.edits.rome.rows import batch_rows

    model, tok, _ = tiny_llama
    b = batch_rows(tok, FACT, continuation_ids(tok, "Paris"), ["", "A. ", "B. "], [FACT.prompt, "F1 Rome", "F2 Rome", "Q Rome"],
                   phrasing_prefixes=0, held=2)
    assert b["n_prompt"] == 3 + 2 and b["n_rewrite"] == 3 + 3
    seen = {}
    real = value_mod.batch_rows
    monkeypatch.setattr(value_mod, "batch_rows", lambda *a, **kw: seen.setdefault("b", real(*a, **kw)))
    fact = Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux",
                target_new="English", target_true="French", relation_id="P103")
    result = get_method("rome")(_params(model, wrappers=("Q: {prompt}",), phrasings=2, v_stop_prob=0.05)).compute(
        model, tok, [fact], env)
    phrasings = result.info["facts"][0]["phrasings"]
    assert phrasings[0] == "Q: " + fact.prompt and len(phrasings) == 3  # the format, then two relation phrasings
    assert seen["b"]["n_prompt"] == 3 + 1  # the prompt under n_context + 1 prefixes, then the format's bare row
