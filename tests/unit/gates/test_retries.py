"""run_with_retries: a refused edit is tried again at other layers, retries reuse the first attempt's
before-state and stop at their first refusing tier, and a retry that passes has run every gate."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from gate_helpers import FACT

from cathrepo.edits.base import EditEnv
from cathrepo.edits.rome.params import RomeParams
from cathrepo.gates.base import GATES, Gate, GateRun
from cathrepo.gates.policy import GatePolicy
from cathrepo.gates.results import GateResult
from cathrepo.models import default_edit_layer
from cathrepo.pipeline import run_with_retries


class _RefuseLayers(Gate):
    """Refuses any edit written at one of ``refused`` layers (a stand-in for a gate that refuses one site)."""

    name = "test_refuse_layers"
    states = ("after",)
    refused: ClassVar[set[int]] = set()
    seen: ClassVar[list[int]] = []

    def measure(self, ctx: GateRun, state: str) -> Any:
        (module,) = ctx.after[-1].modules
        return int(module.split(".layers.")[1].split(".")[0])

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        layer = measured["after"]
        type(self).seen.append(layer)
        return self.result(layer not in self.refused, {"layer": float(layer)}, {})


@pytest.fixture
def refuse_layers():
    GATES.register(_RefuseLayers)
    _RefuseLayers.seen.clear()
    yield _RefuseLayers
    GATES._entries.pop(_RefuseLayers.name)


#: ROME settings a tiny random model can be edited with.
TINY = RomeParams(corpus_tokens=400, n_context=2, context_tokens=4, v_steps=20, clamp_norm_factor=10.0,
                  v_weight_decay=0.0, v_stop_prob=0.0)


def _retry(model, tok, corpus, retry_layers, gates):
    policy = GatePolicy(stages={"edit": gates}, fluency_max_drop=100.0, norms_max_growth=100.0)
    return run_with_retries(model, tok, FACT, method_name="rome", params=TINY,
                            env=EditEnv(corpus=corpus), retry_layers=retry_layers, policy=policy)


def test_a_refused_layer_is_retried_elsewhere_and_the_pass_ran_every_gate(tiny_llama, corpus, refuse_layers):
    model, tok, _ = tiny_llama
    first_layer = default_edit_layer(model)
    refuse_layers.refused = {first_layer}
    result = _retry(model, tok, corpus, 2, ["test_refuse_layers", "fluency", "norms"])
    assert [a["passed"] for a in result.attempts] == [False, True]
    assert result.attempts[0]["failed"][0]["gate"] == "test_refuse_layers"
    assert result.params.layer != first_layer and result.site["layers"] == [result.params.layer]
    assert result.report.passed and not any(r.skipped for r in result.report.results)
    assert result.report["norms"].metrics["modules"] == 1.0  # measured for the retried layer's module


def test_retries_that_fail_stop_early_and_the_first_attempt_is_the_refusal(tiny_llama, corpus, refuse_layers):
    model, tok, _ = tiny_llama
    refuse_layers.refused = set(range(64))
    result = _retry(model, tok, corpus, 2, ["test_refuse_layers", "fluency", "norms"])
    assert len(result.attempts) == 3 and not any(a["passed"] for a in result.attempts)
    assert len(set(refuse_layers.seen)) == 3  # three different layers tried
    assert result.site["layers"] == [default_edit_layer(model)]
    assert not any(r.skipped for r in result.report.results)  # the refusal shown ran every gate
    assert result.attempts[0]["not_run"] == []  # completed at the end
    for attempt in result.attempts[1:]:
        assert [f["gate"] for f in attempt["failed"]] == ["test_refuse_layers"]
        assert attempt["not_run"] == ["fluency"]


def test_without_retries_the_one_attempt_runs_every_gate(tiny_llama, corpus, refuse_layers):
    model, tok, _ = tiny_llama
    refuse_layers.refused = set(range(64))
    result = _retry(model, tok, corpus, 0, ["test_refuse_layers", "fluency", "norms"])
    assert len(result.attempts) == 1 and not result.report.passed
    assert not any(r.skipped for r in result.report.results)


class _RefuseFirst(Gate):
    """Refuses the first edit it judges and passes every later one (a stand-in for a gate that a retry
    satisfies); records a fingerprint of each delta it judged."""

    name = "test_refuse_first"
    states = ("after",)
    seen: ClassVar[list[float]] = []

    def measure(self, ctx: GateRun, state: str) -> Any:
        return float(ctx.after[-1].factors[next(iter(ctx.after[-1].modules))].B.abs().sum())

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        type(self).seen.append(measured["after"])
        return self.result(len(type(self).seen) > 1, {"b": measured["after"]}, {})


@pytest.fixture
def refuse_first():
    GATES.register(_RefuseFirst)
    _RefuseFirst.seen.clear()
    yield _RefuseFirst
    GATES._entries.pop(_RefuseFirst.name)


def _variant_retry(model, tok, corpus, monkeypatch, when, fixed=()):
    from cathrepo.edits.base import RetryVariant
    from cathrepo.edits.rome.method import RomeMethod

    monkeypatch.setattr(RomeMethod, "retry_variants", (
        RetryVariant("unrelated", {"v_stop_prob": 0.3}, frozenset({"fluency"})),
        RetryVariant("broader", {"phrasings": 1}, frozenset(when)),
    ))
    policy = GatePolicy(stages={"edit": ["test_refuse_first", "norms"]}, norms_max_growth=100.0)
    return run_with_retries(model, tok, FACT, method_name="rome", params=TINY, env=EditEnv(corpus=corpus),
                            retry_layers=2, retry_variants=True, fixed=fixed, policy=policy)


def test_a_refusal_retries_the_variants_its_gates_call_for_at_the_same_layer(tiny_llama, corpus, refuse_first,
                                                                           monkeypatch):
    model, tok, _ = tiny_llama
    result = _variant_retry(model, tok, corpus, monkeypatch, {"test_refuse_first"})
    assert [a.get("retry") for a in result.attempts] == [None, "broader"]  # "unrelated" answers fluency only
    assert [a["passed"] for a in result.attempts] == [False, True]
    assert result.params.phrasings == 1 and result.params.v_stop_prob == 0.0
    assert result.site["layers"] == [default_edit_layer(model)]  # the first attempt's layer
    assert refuse_first.seen[0] != refuse_first.seen[1]  # the variant computed a different delta


def test_a_variant_never_changes_a_parameter_the_user_set(tiny_llama, corpus, refuse_first, monkeypatch):
    model, tok, _ = tiny_llama
    result = _variant_retry(model, tok, corpus, monkeypatch, {"test_refuse_first"}, fixed=["phrasings"])
    assert "broader" not in [a.get("retry") for a in result.attempts]
    assert result.attempts[1]["retry"].startswith("layer ")  # the layer retries still run
    assert result.params.phrasings == RomeParams().phrasings  # the default the user kept, not the variant's 1


def test_a_variant_the_parameters_already_hold_is_not_tried_again(tiny_llama, corpus, refuse_first, monkeypatch):
    from cathrepo.edits.base import RetryVariant
    from cathrepo.edits.rome.method import RomeMethod

    model, tok, _ = tiny_llama
    monkeypatch.setattr(RomeMethod, "retry_variants", (
        RetryVariant("same", {"v_stop_prob": TINY.v_stop_prob}, frozenset({"test_refuse_first"})),
        RetryVariant("broader", {"phrasings": 1}, frozenset({"test_refuse_first"})),
    ))
    policy = GatePolicy(stages={"edit": ["test_refuse_first", "norms"]}, norms_max_growth=100.0)
    result = run_with_retries(model, tok, FACT, method_name="rome", params=TINY, env=EditEnv(corpus=corpus),
                              retry_layers=0, retry_variants=True, policy=policy)
    assert [a.get("retry") for a in result.attempts] == [None, "broader"]
    assert len(refuse_first.seen) == 2  # the first attempt and "broader": "same" computed nothing


def test_kept_prompts_hold_every_rewrite_and_the_related_paraphrases():
    from cathrepo.facts.probes import Probe, ProbeSet
    from cathrepo.pipeline import kept_prompts

    def edit(subject, relation, prompt, para):
        return ProbeSet((Probe("rewrite", prompt, "x", "y"), Probe("paraphrase", para, "x", "y"),
                         Probe("neighborhood", "Someone else is a", "y")), subject=subject, relation_id=relation)

    suite = [edit("Anna", "P106", "Anna works as a", "The job of Anna is"),
             edit("Ben", "P27", "Ben is a citizen of", "Ben holds a passport of"),
             edit("Cleo", "P106", "Cleo works as a", "Her job is")]  # the subject is not in it: no key to read
    assert kept_prompts(suite, "P106") == (("Anna works as a", "Anna"), ("The job of Anna is", "Anna"),
                                           ("Ben is a citizen of", "Ben"), ("Cleo works as a", "Cleo"))
    assert kept_prompts(suite) == (("Anna works as a", "Anna"), ("Ben is a citizen of", "Ben"),
                                   ("Cleo works as a", "Cleo"))


def test_an_edit_over_active_edits_holds_their_keys(tiny_llama, corpus):
    from cathrepo.edits.rome.method import RomeMethod
    from cathrepo.facts.probes import Probe, ProbeSet
    from cathrepo.pipeline import run_pipeline

    model, tok, _ = tiny_llama
    earlier = ProbeSet((Probe("rewrite", "The capital of Spain is Madrid", "Paris", "Tokyo"),), subject="Madrid")
    policy = GatePolicy(stages={"edit": ("efficacy",)})
    result = run_pipeline(model, tok, FACT, method=RomeMethod(TINY), env=EditEnv(corpus=corpus), suite=[earlier],
                          policy=policy)
    assert result.info["facts"][0]["kept_keys"] == 1


@pytest.mark.parametrize("neighbors", [2, 5])
def test_the_policy_sets_how_many_neighbours_each_edit_is_measured_on(tiny_llama, corpus, monkeypatch, neighbors):
    import dataclasses

    from cathrepo.edits.rome.method import RomeMethod
    from cathrepo.facts.probes import KnownFact
    from cathrepo.pipeline import run_pipeline

    model, tok, _ = tiny_llama
    fact = dataclasses.replace(FACT, relation_id="P131")
    pool = [KnownFact(f"Town {c}", f"Town {c} is located in the city of", "Lyon", "P131") for c in "ABCDEFGH"]
    monkeypatch.setattr("cathrepo.facts.probes.known_by_model", lambda _m, _t, facts, **_kw: list(facts))
    policy = GatePolicy(stages={"edit": ("efficacy",)}, neighbors=neighbors)
    result = run_pipeline(model, tok, fact, method=RomeMethod(TINY), env=EditEnv(corpus=corpus), known_facts=pool,
                          policy=policy)
    assert result.probes is not None
    mined = [p for p in result.probes.of_kind("neighborhood") if p.source == "mined"]
    assert len(mined) == neighbors
