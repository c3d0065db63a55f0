"""The gates on hand-made deltas, and run_gates' promise to leave the model bit-identical."""

from __future__ import annotations

import pytest
from gate_helpers import FACT, OTHER, oracle_delta, probes_for

from cathrepo.exceptions import UnknownNameError
from cathrepo.gates.base import GATES, run_gates
from cathrepo.gates.carry import GateCarry
from cathrepo.gates.policy import GatePolicy
from tests.helpers import changed_weights, snapshot

FAST = ("efficacy", "paraphrase", "neighborhood", "cfplus", "generation", "fluency", "norms", "regression")


def _fact_base_rejects(model, tok, fact):
    """The fact with new/old swapped if needed, so that the unedited model prefers the old answer."""
    from dataclasses import replace

    from cathrepo.lm.scoring import prefers

    ((new, old),) = prefers(model, tok, [fact.prompt], [fact.target_new], [fact.target_true])
    return fact if new < old else replace(fact, target_new=fact.target_true, target_true=fact.target_new)


def test_certain_delta_passes_efficacy_and_tiny_one_fails(tiny_model):
    model, tok, _ = tiny_model
    fact = _fact_base_rejects(model, tok, FACT)
    probes = probes_for(fact)
    strong = oracle_delta(model, tok, fact.prompt, fact.target_new, fact.target_true)
    weak = strong.scaled(1e-6)
    good = run_gates(model, tok, after=[strong], probes=probes, gates=["efficacy"])
    bad = run_gates(model, tok, after=[weak], probes=probes, gates=["efficacy"])
    assert good.passed and good["efficacy"].metrics["es"] == 1.0
    assert good["efficacy"].metrics["es_before"] == 0.0
    assert not bad.passed and bad["efficacy"].metrics["es"] == 0.0
    assert "does not beat" in bad["efficacy"].detail


def _next_logprobs(model, tok, prompt: str, *deltas):
    """log P(next token | prompt) from one plain forward pass, with ``deltas`` merged into the weights."""
    import torch

    from cathrepo.delta import applied

    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad(), applied(model, *deltas):
        return torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)


def _growth(model, delta, name: str) -> float:
    """Relative Frobenius-norm growth of ``name``'s weight under ``delta`` (a Llama layout: W + BA)."""
    from cathrepo.models import get_module

    weight = get_module(model, name).weight.detach().float()
    return float((weight + delta.factors[name].full()).norm() / weight.norm() - 1.0)


def test_kl_is_zero_without_change_and_is_the_neighbours_kl_with_one(tiny_llama):
    """The same state before and after moves nothing: NKL 0 and no neighbour lost. With the delta only
    after, NKL is KL(before ‖ after) of the neighbour prompt's next token, from two plain forward passes
    here (so a gate that compared the wrong states, or the wrong way round, shows)."""
    model, tok, _ = tiny_llama
    delta = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    report = run_gates(model, tok, before=[delta], after=[delta], probes=probes_for(FACT),
                       gates=["cfplus", "neighborhood"])
    assert report["cfplus"].metrics["nkl"] == pytest.approx(0.0, abs=1e-7)
    assert report["neighborhood"].metrics["drop"] == 0.0
    assert report.passed
    changed = run_gates(model, tok, after=[delta], probes=probes_for(FACT), gates=["cfplus"])
    (neighbour,) = FACT.neighborhood
    p, q = _next_logprobs(model, tok, neighbour.prompt), _next_logprobs(model, tok, neighbour.prompt, delta)
    expected = float((p.exp() * (p - q)).sum())
    assert expected > 1e-3  # the edit does reach the neighbour: the case can tell the states apart
    assert changed["cfplus"].metrics["nkl"] == pytest.approx(expected, rel=1e-3)


def test_regression_catches_a_delta_that_undoes_an_earlier_edit(tiny_model):
    model, tok, _ = tiny_model
    fact = _fact_base_rejects(model, tok, FACT)
    first = oracle_delta(model, tok, fact.prompt, fact.target_new, fact.target_true)
    undo = first.scaled(-1.0)
    unrelated = oracle_delta(model, tok, OTHER.prompt, OTHER.target_new, OTHER.target_true, strength=1e-3)
    suite = [probes_for(fact)]
    bad = run_gates(model, tok, before=[first], after=[first, undo], suite=suite, gates=["regression"])
    ok = run_gates(model, tok, before=[first], after=[first, unrelated], suite=suite, gates=["regression"])
    assert not bad.passed
    assert bad["regression"].metrics["broken_rewrite"] == 1.0
    assert "rewrite" in bad["regression"].detail
    assert ok.passed and ok["regression"].metrics["broken_rewrite"] == 0.0


def test_regression_in_bfloat16_agrees_on_clear_cases(tiny_llama):
    model, tok, _ = tiny_llama
    fact = _fact_base_rejects(model, tok, FACT)
    first = oracle_delta(model, tok, fact.prompt, fact.target_new, fact.target_true)
    policy = GatePolicy(regression_dtype="bfloat16")
    bad = run_gates(model, tok, before=[first], after=[first, first.scaled(-1.0)], suite=[probes_for(fact)],
                    policy=policy, gates=["regression"])
    assert bad["regression"].metrics["broken_rewrite"] == 1.0
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"


def test_run_gates_leaves_the_model_bit_identical(tiny_model, tmp_path):
    model, tok, _ = tiny_model
    snap = snapshot(model)
    first = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    second = oracle_delta(model, tok, OTHER.prompt, OTHER.target_new, OTHER.target_true)
    policy = GatePolicy(retention_data=str(_known_sample()), retention_sample=20, retention_known_only=False)
    report = run_gates(model, tok, before=[first], after=[first, second], probes=probes_for(OTHER),
                       suite=[probes_for(FACT)], policy=policy, gates=(*FAST, "retention", "perplexity"),
                       base_hash="test", cache_dir=tmp_path)
    assert not changed_weights(model, snap)
    assert report.names() == [*FAST, "retention", "perplexity"]
    assert all(r.seconds >= 0 for r in report.results)


def test_model_restored_when_a_gate_raises(tiny_llama, monkeypatch):
    model, tok, _ = tiny_llama
    snap = snapshot(model)
    delta = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    from cathrepo.gates import counterfact

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(counterfact, "score_probes", boom)
    with pytest.raises(RuntimeError):
        run_gates(model, tok, after=[delta], probes=probes_for(FACT), gates=["efficacy"])
    assert not changed_weights(model, snap)


def test_gates_without_inputs_are_skipped(tiny_llama):
    model, tok, _ = tiny_llama
    report = run_gates(model, tok, stage="revert", gates=["efficacy", "regression", "norms"])
    assert report.passed
    assert all(r.skipped for r in report.results)


def test_norms_gate_bounds_growth(tiny_llama):
    model, tok, _ = tiny_llama
    delta = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    big = run_gates(model, tok, after=[delta], gates=["norms"])
    small = run_gates(model, tok, after=[delta.scaled(1e-6)], gates=["norms"])
    (name,) = delta.modules
    assert big["norms"].metrics["max_growth"] == pytest.approx(_growth(model, delta, name), rel=1e-4)
    assert not big.passed and big["norms"].metrics["max_growth"] > 0.05
    assert small.passed
    assert small["norms"].metrics["max_growth"] == pytest.approx(_growth(model, delta.scaled(1e-6), name),
                                                                 abs=1e-6)


def test_retention_counts_changed_answers_and_caches_the_base(tiny_llama, tmp_path):
    model, tok, _ = tiny_llama
    policy = GatePolicy(retention_data=str(_known_sample()), retention_sample=30, retention_known_only=False)
    delta = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true, strength=1e4)
    same = run_gates(model, tok, after=[], policy=policy, gates=["retention"], base_hash="h", cache_dir=tmp_path)
    assert same["retention"].metrics["retention"] == 1.0
    assert list(tmp_path.glob("retention/state-*.json"))
    broken = run_gates(model, tok, after=[delta], policy=policy, gates=["retention"], base_hash="h",
                       cache_dir=tmp_path)
    assert broken["retention"].metrics["retention"] < 1.0
    assert not broken.passed


def _generate(model, tok, prompt: str, tokens: int, *deltas) -> str:
    """transformers' own greedy ``generate`` on one prompt, ``deltas`` merged into the weights."""
    import torch

    from cathrepo.delta import applied

    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad(), applied(model, *deltas):
        out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_generation_and_fluency_numbers_are_those_of_plain_generate(tiny_llama):
    """The gates decode "before" and "after" rows in one batch with the delta on some rows only; their
    numbers must be those of transformers' ``generate`` run prompt by prompt on the merged weights."""
    from cathrepo.gates.generation import common_drop, contains_answer, ngram_entropy

    model, tok, _ = tiny_llama
    policy = GatePolicy()
    delta = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    probes = probes_for(FACT)
    report = run_gates(model, tok, after=[delta], probes=probes, policy=policy, gates=["generation", "fluency"])
    weak = run_gates(model, tok, after=[delta.scaled(1e-6)], probes=probes, policy=policy, gates=["generation"])
    successes = []
    for run, d in ((report, delta), (weak, delta.scaled(1e-6))):
        hits = [contains_answer(_generate(model, tok, p.prompt, policy.generation_tokens, d), p.target)
                for p in probes.of_kind("rewrite", "paraphrase")]
        assert run["generation"].metrics["gen_success"] == sum(hits) / len(hits)
        assert run["generation"].metrics["gen_rewrite"] == float(hits[0])
        successes.append(sum(hits) / len(hits))
    assert successes[0] > successes[1]  # the oracle's write is said; a millionth of it is not
    prompts = list(dict.fromkeys(p.prompt for p in probes.of_kind("rewrite", "paraphrase", "generation")))
    before_texts = [_generate(model, tok, p, policy.fluency_tokens) for p in prompts]
    after_texts = [_generate(model, tok, p, policy.fluency_tokens, delta) for p in prompts]
    before, after = [ngram_entropy(t) for t in before_texts], [ngram_entropy(t) for t in after_texts]
    fluency = report["fluency"].metrics
    assert fluency["n"] == len(prompts) == 2
    assert fluency["entropy_before"] == pytest.approx(sum(before) / len(before))
    assert fluency["entropy"] == pytest.approx(sum(after) / len(after))
    assert fluency["drop_decoded"] == pytest.approx(fluency["entropy_before"] - fluency["entropy"])
    assert fluency["drop"] == fluency["drop_common"]  # the default compares at a common length
    drops = [common_drop(b, a) for b, a in zip(before_texts, after_texts, strict=True)]
    assert fluency["drop"] == pytest.approx(sum(drops) / 2)
    assert fluency["drop_max"] == pytest.approx(max(drops))
    assert fluency["drop_se"] == pytest.approx(abs(drops[0] - drops[1]) / 2)  # two prompts: half their spread


def test_fluency_prompts_add_open_prompts_about_the_subject_to_the_same_measure(tiny_llama):
    from cathrepo.exceptions import ConfigError
    from cathrepo.facts.templates import OPEN_PROMPTS, fill
    from cathrepo.gates.generation import ngram_entropy

    model, tok, _ = tiny_llama
    policy = GatePolicy(fluency_prompts=3, fluency_compare="as-decoded")  # drops of the texts as decoded
    delta = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    probes = probes_for(FACT)
    report = run_gates(model, tok, after=[delta], probes=probes, policy=policy, gates=["fluency"])
    own = list(dict.fromkeys(p.prompt for p in probes.of_kind("rewrite", "paraphrase", "generation")))
    prompts = own + [fill(t, FACT.subject) for t in OPEN_PROMPTS[:3]]
    assert prompts[-3] == "The Eiffel Tower is"
    before = [ngram_entropy(_generate(model, tok, p, policy.fluency_tokens)) for p in prompts]
    after = [ngram_entropy(_generate(model, tok, p, policy.fluency_tokens, delta)) for p in prompts]
    fluency = report["fluency"].metrics
    assert fluency["n"] == len(own) + 3
    k = len(own)  # the edit's own prompts alone, reported beside the mean over all of them
    assert fluency["drop_own"] == pytest.approx((sum(before[:k]) - sum(after[:k])) / k)
    assert fluency["entropy_before"] == pytest.approx(sum(before) / len(before))
    assert fluency["entropy"] == pytest.approx(sum(after) / len(after))
    with pytest.raises(ConfigError, match="fluency_prompts"):
        GatePolicy(fluency_prompts=len(OPEN_PROMPTS) + 1)


def test_forget_probes_are_judged_by_greedy_answers(tiny_llama):
    from cathrepo.facts.probes import Probe, ProbeSet
    from cathrepo.lm.decoding import greedy_continuations

    model, tok, _ = tiny_llama
    answer = greedy_continuations(model, tok, [FACT.prompt], max_new_tokens=3)[0].split()[0]
    probes = ProbeSet((Probe("forget", FACT.prompt, answer),), FACT.subject, action="forget")
    kept = run_gates(model, tok, after=[], probes=probes, gates=["efficacy"])
    assert not kept.passed and kept["efficacy"].metrics["forget"] == 0.0


def test_unknown_gate_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="efficacy"):
        GATES.get("eficacy")


def _known_sample():
    from pathlib import Path

    return Path(__file__).parents[2] / "data" / "known-sample.json"


def test_regression_checks_rewrites_everywhere_and_everything_for_related_edits():
    from cathrepo.facts.probes import Probe, ProbeSet
    from cathrepo.gates.base import GateRun
    from cathrepo.gates.regression import RegressionGate

    def probeset(subject, relation):
        return ProbeSet((Probe("rewrite", f"{subject} is in", "Rome", "Paris"),
                         Probe("paraphrase", f"Where is {subject}?", "Rome", "Paris")), subject, relation)

    suite = (probeset("A", "P17"), probeset("B", "P36"), probeset("C", None))
    new = probeset("D", "P17")
    policy = GatePolicy()
    gate = RegressionGate(policy)

    def kinds(stage, probes=new, fast=None):
        p = policy if fast is None else GatePolicy(regression_fast_kinds=fast)
        ctx = GateRun(None, None, (), (), probes, suite, p, stage)
        return [[x.kind for x in probes] for probes in RegressionGate(p).selection(ctx)]

    assert kinds("edit") == [["rewrite", "paraphrase"], ["rewrite"], ["rewrite"]]
    assert kinds("merge") == [["rewrite", "paraphrase"]] * 3
    assert kinds("edit", fast=()) == [["rewrite", "paraphrase"]] * 3
    assert gate.name == "regression"


def test_an_exact_no_op_passes_every_gate_of_the_default_policy(tiny_llama, tmp_path):
    """A zero delta with probes whose targets are the model's own answers is a null edit: with the default
    policy every gate of the edit stage passes, and only regression skips (no earlier edits)."""
    from cathrepo.delta import Delta, LowRank
    from cathrepo.facts.probes import Probe, ProbeSet, model_answer

    model, tok, _ = tiny_llama
    para, neighbour = "Where is The Eiffel Tower? It is located in", OTHER.prompt
    own = {p: (model_answer(model, tok, p) or "").split(" ")[0] for p in (FACT.prompt, para, neighbour)}
    assert all(own.values())
    probes = ProbeSet((
        Probe("rewrite", FACT.prompt, own[FACT.prompt], "Rome"),
        Probe("paraphrase", para, own[para], "Rome"),
        Probe("neighborhood", neighbour, own[neighbour], own[FACT.prompt]),
        Probe("generation", FACT.prompt, own[FACT.prompt]),
    ), FACT.subject)
    real = oracle_delta(model, tok, FACT.prompt, "Rome", "Paris")
    zero = Delta({k: LowRank(f.B * 0, f.A) for k, f in real.factors.items()})
    snap = snapshot(model)
    report = run_gates(model, tok, after=[zero], probes=probes, policy=GatePolicy(), stage="edit",
                       base_hash="tiny", cache_dir=tmp_path)
    assert not changed_weights(model, snap)
    assert report.names() == list(GatePolicy().gates_for("edit"))
    assert report.passed, [(r.summary(), r.detail) for r in report.failures]
    assert [r.name for r in report.results if r.skipped] == ["regression"]


def test_fail_fast_stops_after_the_cheap_tier_that_refuses(tiny_model):
    model, tok, _ = tiny_model
    fact = _fact_base_rejects(model, tok, FACT)
    weak = oracle_delta(model, tok, fact.prompt, fact.target_new, fact.target_true).scaled(1e-6)
    gates = ["efficacy", "generation", "fluency"]
    full = run_gates(model, tok, after=[weak], probes=probes_for(fact), gates=gates)
    fast = run_gates(model, tok, after=[weak], probes=probes_for(fact), gates=gates, fail_fast=True)
    assert not full["efficacy"].passed and not full["generation"].skipped
    assert not fast.passed and fast.names() == gates
    assert fast["efficacy"].metrics == full["efficacy"].metrics
    for name in ("generation", "fluency"):
        assert fast[name].skipped and fast[name].not_run and "not run" in fast[name].detail
        assert not fast[name].metrics


def test_fail_fast_runs_every_gate_of_an_edit_that_passes(tiny_model):
    model, tok, _ = tiny_model
    fact = _fact_base_rejects(model, tok, FACT)
    strong = oracle_delta(model, tok, fact.prompt, fact.target_new, fact.target_true)
    gates = ["efficacy", "fluency", "norms"]
    fast = run_gates(model, tok, after=[strong], probes=probes_for(fact), gates=gates, fail_fast=True,
                     policy=GatePolicy(norms_max_growth=10.0, fluency_max_drop=10.0))
    assert fast.passed and not any(r.skipped for r in fast.results)


def test_carry_reuses_before_measurements_only_for_the_same_before_state(tiny_model, monkeypatch):
    from cathrepo.gates import base

    model, tok, _ = tiny_model
    fact = _fact_base_rejects(model, tok, FACT)
    strong = oracle_delta(model, tok, fact.prompt, fact.target_new, fact.target_true)
    other = oracle_delta(model, tok, OTHER.prompt, OTHER.target_new, OTHER.target_true)
    decoded: list[list[str]] = []
    real = base.decode_requests

    def counting(ctx, gates):
        before = len(ctx.memo)
        real(ctx, gates)
        decoded[-1] += [k[1] for k in list(ctx.memo)[before:] if k[0] == "decode"]

    monkeypatch.setattr(base, "decode_requests", counting)
    carry = GateCarry()
    decoded.append([])
    first = run_gates(model, tok, after=[strong], probes=probes_for(fact), gates=["fluency"], carry=carry)
    decoded.append([])
    again = run_gates(model, tok, after=[strong.scaled(0.5)], probes=probes_for(fact), gates=["fluency"],
                      carry=carry)
    decoded.append([])
    run_gates(model, tok, before=[other], after=[other, strong], probes=probes_for(fact), gates=["fluency"],
              carry=carry)
    assert "before" in decoded[0] and "after" in decoded[0]
    assert set(decoded[1]) == {"after"}  # the same before state: only the new rows are decoded
    assert "before" in decoded[2]  # another before state: nothing carried over
    assert again["fluency"].metrics["entropy_before"] == first["fluency"].metrics["entropy_before"]


def test_carry_skips_gates_whose_before_measurement_depends_on_the_new_delta(tiny_llama):
    from cathrepo.delta import Delta
    from cathrepo.models import family_for, num_layers

    model, tok, _ = tiny_llama
    first = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    other_layer = family_for(model).layer_name("mlp_out", num_layers(model) - 2)
    moved = Delta({other_layer: first.factors[first.modules[0]]})
    carry = GateCarry()
    run_gates(model, tok, after=[first], probes=probes_for(FACT), gates=["norms"], carry=carry)
    report = run_gates(model, tok, after=[moved], probes=probes_for(FACT), gates=["norms"], carry=carry)
    assert report["norms"].metrics["modules"] == 1.0
    # measured on the moved module's own weight, not on a norm carried over from the first run's module
    assert report["norms"].metrics["max_growth"] == pytest.approx(_growth(model, moved, other_layer), rel=1e-4)
    assert report["norms"].metrics["max_growth"] != pytest.approx(_growth(model, first, first.modules[0]),
                                                                  rel=1e-3)


def test_fail_fast_skips_fluency_once_the_short_generation_check_refused(tiny_llama):
    model, tok, _ = tiny_llama
    weak = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true).scaled(1e-6)
    full = run_gates(model, tok, after=[weak], probes=probes_for(FACT), gates=["generation", "fluency"])
    fast = run_gates(model, tok, after=[weak], probes=probes_for(FACT), gates=["generation", "fluency"],
                     fail_fast=True)
    assert not full["generation"].passed and not full["fluency"].skipped
    assert fast["generation"].metrics == full["generation"].metrics
    assert fast["fluency"].skipped and "not run" in fast["fluency"].detail


def test_fail_fast_judges_fluency_on_its_full_length_after_the_short_generation_decode(tiny_llama):
    model, tok, _ = tiny_llama
    delta = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    policy = GatePolicy(generation_min=0.0, fluency_max_drop=100.0)
    gates = ["generation", "fluency"]
    full = run_gates(model, tok, after=[delta], probes=probes_for(FACT), gates=gates, policy=policy)
    fast = run_gates(model, tok, after=[delta], probes=probes_for(FACT), gates=gates, policy=policy, fail_fast=True)
    assert fast["generation"].passed and not fast["fluency"].skipped
    assert fast["fluency"].metrics == full["fluency"].metrics
    assert fast["generation"].metrics == full["generation"].metrics


def test_a_fail_fast_retry_decodes_only_the_short_rows_when_generation_refuses(tiny_llama, monkeypatch):
    model, tok, _ = tiny_llama
    weak = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true).scaled(1e-6)
    decoded = _record_decodes(monkeypatch)
    carry = GateCarry()
    gates = ["generation", "fluency"]
    run_gates(model, tok, after=[weak], probes=probes_for(FACT), gates=gates, carry=carry)
    decoded.clear()
    retry = run_gates(model, tok, after=[weak.scaled(2.0)], probes=probes_for(FACT), gates=gates, carry=carry,
                      fail_fast=True)
    assert not retry["generation"].passed and retry["fluency"].skipped
    budgets = {tokens for _, (tokens, _) in decoded}
    assert budgets == {GatePolicy().generation_tokens}  # no fluency-length pass


def test_fluency_common_drop_compares_a_continuation_that_ended_with_as_many_words_of_the_other():
    from cathrepo.gates.generation import common_drop, ngram_entropy

    before = "the players said that the team would win the cup again next year"
    assert common_drop(before, "the players said") == 0.0  # ended early, not repeating: no drop
    assert ngram_entropy(before) - ngram_entropy("the players said") > 1.0  # the drop as decoded is large
    looping = "the cup the cup the cup the cup the cup the cup"
    assert common_drop(before, looping) == pytest.approx(ngram_entropy(before.split()[:12]) - ngram_entropy(looping))
    assert common_drop(before, looping) > 1.0  # a repetition at full length still drops


def test_fluency_common_length_judges_an_answer_that_ends_as_no_repetition():
    """With ``fluency_compare`` 'common-length' both texts of a prompt are cut to the shorter one's words:
    an edited model that answers and stops is not refused, one that loops at full length still is, and
    the as-decoded rule reads the early stop as a drop. Common length is the default."""
    from cathrepo.facts.probes import Probe, ProbeSet
    from cathrepo.gates.base import GateRun
    from cathrepo.gates.generation import FluencyGate, common_drop

    probes = ProbeSet((Probe("rewrite", "Rome is in", "Paris", "Italy"),
                       Probe("paraphrase", "Where is Rome? It is in", "Paris", "Italy")), "Rome", None)
    before = ["the players said that the team would win the cup again next year"] * 2
    stops = ["Paris, and that is all", "Paris."]
    loops = ["Paris the cup the cup the cup the cup the cup the cup the cup"] * 2
    assert common_drop(before[0], stops[0]) == common_drop(stops[0], before[0]) == 0.0  # symmetric

    def verdict(compare, after):
        gate = FluencyGate(GatePolicy(fluency_compare=compare))
        ctx = GateRun(None, None, (), (), probes, (), gate.policy, "edit")
        measured = {"before": {"texts": before, "half": before}, "after": {"texts": after, "half": after}}
        return gate.judge(ctx, measured)

    assert not verdict("as-decoded", stops).passed
    assert verdict("common-length", stops).passed
    assert not verdict("common-length", loops).passed
    assert GatePolicy().fluency_compare == "common-length"
    with pytest.raises(Exception, match="fluency_compare"):
        GatePolicy(fluency_compare="shortest")


def test_a_fail_fast_first_attempt_decodes_nothing_when_its_own_probes_refuse(tiny_llama, monkeypatch):
    model, tok, _ = tiny_llama
    weak = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true).scaled(1e-6)
    decoded = _record_decodes(monkeypatch)
    gates = ["efficacy", "generation", "fluency"]
    report = run_gates(model, tok, after=[weak], probes=probes_for(FACT), gates=gates, carry=GateCarry(),
                       fail_fast=True)
    assert not report["efficacy"].passed and report["generation"].skipped and report["fluency"].skipped
    assert decoded == []  # fluency's decode waits for the tier that reads it
    full = run_gates(model, tok, after=[weak], probes=probes_for(FACT), gates=gates, carry=GateCarry())
    assert not full["efficacy"].passed and not full["fluency"].skipped
    assert {k[1] for k, _ in decoded} == {"before", "after"}  # without fail_fast, one pass for every gate


def _record_decodes(monkeypatch) -> list[tuple[tuple, tuple]]:
    """Record every continuation run_gates decodes (memo key, (tokens, ids)) from now on."""
    from cathrepo.gates import base

    decoded: list[tuple[tuple, tuple]] = []
    real = base.decode_requests

    def recording(ctx, gates):
        before = dict(ctx.memo)
        real(ctx, gates)
        decoded.extend((k, v) for k, v in ctx.memo.items() if k[0] == "decode" and before.get(k) != v)

    monkeypatch.setattr(base, "decode_requests", recording)
    return decoded


@pytest.fixture
def two_threads():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_decoding_beside_the_scoring_gives_the_report_of_decoding_first(tiny_llama, monkeypatch, tmp_path, two_threads):
    """With two threads the decode runs in a thread of its own beside retention and the suite; every
    gate's verdict and metrics are those of the run that decodes first, on a stack with an earlier edit
    on the same module, the model is bit-identical afterwards and torch has its two threads back."""
    import torch

    from cathrepo.gates import base, decodes

    model, tok, _ = tiny_llama
    earlier = oracle_delta(model, tok, OTHER.prompt, OTHER.target_new, OTHER.target_true)
    new = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    gates = ["efficacy", "generation", "fluency", "retention", "regression"]
    started: list[bool] = []

    def spy(ctx, asked):
        finish = decodes.decode_beside(ctx, asked)
        started.append(finish is not None)
        return finish

    def run(cache: str):
        return run_gates(model, tok, before=[earlier], after=[earlier, new], probes=probes_for(FACT),
                         suite=[probes_for(OTHER)], gates=gates, base_hash="tiny", cache_dir=tmp_path / cache)

    snap = snapshot(model)
    monkeypatch.setattr(base, "decode_beside", spy)
    beside = run("beside")
    assert started == [True] and torch.get_num_threads() == 2
    assert not changed_weights(model, snap)
    monkeypatch.setattr(base, "decode_beside", lambda ctx, asked: None)
    first = run("first")
    for name in gates:
        assert (beside[name].passed, beside[name].skipped) == (first[name].passed, first[name].skipped), name
        assert beside[name].metrics == pytest.approx(first[name].metrics, rel=1e-4, abs=1e-5), name


def test_a_decode_that_fails_beside_the_scoring_fails_the_run_and_restores_everything(tiny_llama, monkeypatch,
                                                                                     two_threads):
    import torch

    from cathrepo.lm.decoding import EncodedPrompts

    model, tok, _ = tiny_llama
    new = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)

    def broken(self, model, **kwargs):
        raise RuntimeError("decode failed")

    monkeypatch.setattr(EncodedPrompts, "decode", broken)
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="decode failed"):
        run_gates(model, tok, after=[new], probes=probes_for(FACT), gates=["generation", "retention"])
    assert not changed_weights(model, snap) and torch.get_num_threads() == 2


def test_the_decodes_private_copy_shares_only_what_no_delta_changes(tiny_llama):
    from cathrepo.delta import applied
    from cathrepo.gates.decodes import private_copy
    from cathrepo.lm.hooks import add_to_output

    model, tok, _ = tiny_llama
    new = oracle_delta(model, tok, FACT.prompt, FACT.target_new, FACT.target_true)
    (name,) = new.factors
    twin = private_copy(model, [new])
    ours, theirs = dict(model.named_parameters()), dict(twin.named_parameters())
    assert all(ours[k] is theirs[k] for k in ours if k != f"{name}.weight")
    assert theirs[f"{name}.weight"] is not ours[f"{name}.weight"]
    assert bool((theirs[f"{name}.weight"] == ours[f"{name}.weight"]).all())
    snap = snapshot(model)
    with applied(twin, new), add_to_output(twin, {name: lambda x, out: out * 0}):
        assert not changed_weights(model, snap)  # the delta went to the copy's own weight
        assert not model.get_submodule(name)._forward_hooks  # and the hook to the copy's module


@pytest.mark.parametrize("slow_scoring", [False, True])
def test_a_decode_beside_that_its_gates_refuse_reports_what_decoding_first_reports(tiny_llama, monkeypatch,
                                                                                   two_threads, slow_scoring):
    """fail_fast: when the short generation check refuses, the report is the one of decoding first
    (fluency and retention not run), whether the decode ended before the scoring beside it (which then
    stops between two batches) or after it."""
    import time

    from cathrepo.gates import base
    from cathrepo.lm import scoring

    model, tok, _ = tiny_llama
    fact = _fact_base_rejects(model, tok, FACT)
    weak = oracle_delta(model, tok, fact.prompt, fact.target_new, fact.target_true).scaled(0.02)
    gates = ["generation", "fluency", "retention"]
    policy = GatePolicy(retention_sample=64, batch_size=4)
    batches = [0]
    if slow_scoring:  # every batch waits, so the decode is done long before the scoring
        real = scoring.length_batches

        def slowly(*args, **kwargs):
            for batch in real(*args, **kwargs):
                batches[0] += 1
                time.sleep(0.2)
                yield batch

        monkeypatch.setattr(scoring, "length_batches", slowly)
    beside = run_gates(model, tok, after=[weak], probes=probes_for(fact), gates=gates, policy=policy, fail_fast=True)
    if slow_scoring:  # the scoring beside started and stopped early
        started, batches[0] = batches[0], 0
        run_gates(model, tok, after=[weak], gates=["retention"], policy=policy)
        assert 0 < started < batches[0]
    monkeypatch.setattr(base, "decode_beside", lambda ctx, asked: None)
    first = run_gates(model, tok, after=[weak], probes=probes_for(fact), gates=gates, policy=policy, fail_fast=True)
    assert not first["generation"].passed, "the weak delta must fail the generation check for this test"
    for name in gates:
        assert (beside[name].passed, beside[name].skipped, beside[name].not_run) == \
            (first[name].passed, first[name].skipped, first[name].not_run), name
        assert beside[name].metrics == first[name].metrics, name
