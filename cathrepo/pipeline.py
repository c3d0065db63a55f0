"""The edit pipeline, ① → ⑤ of DESIGN.md §2 in one readable function.

    fact ─▶ probes ─▶ locate + compute delta ─▶ gates  (─▶ on refusal: the next attributed layer)

No repository here: the caller (``cathrepo.repo.edit`` or a benchmark) passes the base model, the
deltas already active, their probe sets and the gate policy, and decides what to do with the result.
The model is left exactly as it was given (no deltas applied).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cathrepo.delta import Delta
    from cathrepo.edits.base import EditEnv, EditMethod, EditResult
    from cathrepo.facts.probes import KnownFact, ProbeSet
    from cathrepo.facts.schema import Fact
    from cathrepo.gates.carry import GateCarry
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.gates.results import GateReport


def merge_probe_sets(sets: Sequence[ProbeSet]) -> ProbeSet | None:
    """One probe set holding every probe of ``sets`` (an edit of several facts, or a revision)."""
    from cathrepo.facts.probes import ProbeSet

    if not sets:
        return None
    if len(sets) == 1:
        return sets[0]
    kinds = {s.action for s in sets}
    return ProbeSet(tuple(p for s in sets for p in s.probes), sets[0].subject, None,
                    kinds.pop() if len(kinds) == 1 else "edit", {"facts": len(sets)})


def run_pipeline(
    model: Any,
    tokenizer: Any,
    facts: Fact | Sequence[Fact],
    *,
    method: EditMethod,
    env: EditEnv,
    active: Sequence[Delta] = (),
    suite: Sequence[ProbeSet] = (),
    policy: GatePolicy | None = None,
    known_facts: Sequence[KnownFact] | None = None,
    progress: Callable[[str], None] | None = None,
    prepared: EditResult | None = None,
    fail_fast: bool = False,
    carry: GateCarry | None = None,
    after_of: Callable[[Delta], Sequence[Delta]] | None = None,
) -> EditResult:
    """Probe, compute and gate one edit on the model with ``active`` deltas applied.

    Args:
        model: the base model with no delta applied; unchanged on return.
        facts: what to write (or forget): one fact, or several written by one delta (a passage).
        method: the edit method instance (its params already resolved).
        env: base hash, caches and corpus for the method.
        active: the deltas already active, in stack order; the new delta is computed on top of them.
        suite: the probe sets of the active edits (the regression suite).
        policy: gate thresholds (defaults when None).
        known_facts: the pool neighbours are mined from (default: the shipped known facts).
        progress: called with a short message at each stage.
        prepared: an earlier attempt at the same facts on the same ``active`` stack: its facts and probes
            are reused instead of built again.
        fail_fast, carry: passed to :func:`~cathrepo.gates.base.run_gates` (retries stop at the first
            refusing tier and reuse the first attempt's ``before`` measurements).
        after_of: what the model carries once the new delta is added (default ``(*active, delta)``): a
            repository that restrains its stack (``[stack] restrain``) gates the restrained sum it will apply.
    """
    from cathrepo.delta import applied
    from cathrepo.facts.probes import build_probes
    from cathrepo.facts.schema import Fact
    from cathrepo.gates.policy import GatePolicy

    todo = [facts] if isinstance(facts, Fact) else list(facts)
    say = progress or (lambda _msg: None)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    # ② probes, on the model as it is now (active edits applied): mined neighbours must be answers the
    #    model already gives, and a missing old target is the model's own answer.
    say("probes")
    with applied(model, *active):
        if prepared is not None and prepared.probes is not None:
            todo, probes = list(prepared.facts), prepared.probes
        else:
            neighbors = (policy or GatePolicy()).neighbors
            sets = [build_probes(fact, model, tokenizer, known_facts, n_neighbors=neighbors) for fact in todo]
            todo = [_with_old_target(fact, probes) for fact, probes in zip(todo, sets, strict=True)]
            merged = merge_probe_sets(sets)
            assert merged is not None
            probes = merged
        seconds["probes"] = time.perf_counter() - start
        # ③④ locate and compute: methods that use attribution run it inside compute.
        say(f"compute ({method.name})")
        start = time.perf_counter()
        if suite and not env.kept:
            env = dataclasses.replace(env, kept=kept_prompts(suite, probes.relation_id))
        if env.active is None:
            env = dataclasses.replace(env, active=tuple(active))
        result = method.compute(model, tokenizer, todo, env)
        seconds["compute"] = time.perf_counter() - start
    # ⑤ gates: before = the active edits, after = active + the new delta.
    say("gates")
    start = time.perf_counter()
    report = _gate_edit(model, tokenizer, result.delta, probes, active=active, suite=suite, policy=policy,
                        base_hash=env.base_hash, progress=progress, fail_fast=fail_fast, carry=carry, after_of=after_of)
    seconds["gates"] = time.perf_counter() - start
    return dataclasses.replace(result, facts=tuple(todo), probes=probes, report=report, seconds=seconds)


def kept_prompts(suite: Sequence[ProbeSet], relation_id: str | None = None) -> tuple[tuple[str, str], ...]:
    """(prompt, subject) a new edit's update is held off (:attr:`~cathrepo.edits.base.EditEnv.kept`):
    every active edit's hard probes (the rewrite or forget prompt that must keep holding), and the
    paraphrases of the active edits of the new fact's relation, which the regression gate checks too."""
    from cathrepo.facts.probes import HARD_KINDS

    kept: dict[tuple[str, str], None] = {}
    for ps in suite:
        if not ps.subject:
            continue
        related = relation_id is not None and ps.relation_id == relation_id
        for p in ps.of_kind(*HARD_KINDS, *(("paraphrase",) if related else ())):
            if ps.subject in p.prompt:  # a key is read at the subject's last token
                kept[(p.prompt, ps.subject)] = None
    return tuple(kept)


def _gate_edit(model: Any, tokenizer: Any, delta: Delta, probes: ProbeSet, *, active: Sequence[Delta] = (),
               suite: Sequence[ProbeSet] = (), policy: GatePolicy | None = None, base_hash: str = "unknown",
               progress: Callable[[str], None] | None = None,
               after_of: Callable[[Delta], Sequence[Delta]] | None = None, **gating: Any) -> GateReport:
    """The ``edit`` stage's gates on ``delta`` written over the ``active`` stack (the ``forget`` stage's when
    the probes are a forget's; ``after_of``: see :func:`run_pipeline`; ``gating``: more
    :func:`~cathrepo.gates.base.run_gates` arguments)."""
    from cathrepo.gates.base import run_gates

    stage = "forget" if probes.action == "forget" else "edit"
    after = tuple(after_of(delta)) if after_of is not None else (*active, delta)
    return run_gates(model, tokenizer, before=tuple(active), after=after, probes=probes, suite=suite,
                     policy=policy, stage=stage, base_hash=base_hash, progress=progress, **gating)


def attempt_summary(result: EditResult, method: str) -> dict[str, Any]:
    """What one attempt was and how its gates judged it (a refusal's ``attempts`` list)."""
    report = result.gates
    return {"method": method, "site": dict(result.site), "passed": report.passed,
            "failed": [{"gate": r.name, "metrics": dict(r.metrics), "thresholds": dict(r.thresholds),
                        "detail": r.detail} for r in report.failures],
            "not_run": [r.name for r in report.results if r.not_run],
            "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}


def attempt_label(attempt: Mapping[str, Any]) -> str:
    """'layer 6' for an attempt as given or moved to another layer, 'gentler at layer 6' for a variant."""
    where = f"layer {attempt['site'].get('layers', ['?'])[0]}"
    how = attempt.get("retry", where)
    return how if how.startswith("layer ") else f"{how} at {where}"


def attempt_refusal(attempt: Mapping[str, Any]) -> str:
    """The attempt's label with the gates that refused it: 'gentler at layer 6 (fluency, retention)'."""
    return f"{attempt_label(attempt)} ({', '.join(f['gate'] for f in attempt['failed'])})"


def run_with_retries(
    model: Any,
    tokenizer: Any,
    facts: Fact | Sequence[Fact],
    *,
    method_name: str,
    params: Any,
    env: EditEnv,
    retry_layers: int = 0,
    retry_variants: bool = False,
    fixed: Sequence[str] = (),
    **pipeline: Any,
) -> EditResult:
    """:func:`run_pipeline`, and when the gates refuse an edit: with ``retry_variants``, the same edit at
    the same layer computed with each of the method's :attr:`~cathrepo.edits.base.EditMethod.retry_variants`
    that the refusing gates call for (and that change none of the ``fixed`` parameters, those the user
    set, and change something: a variant the parameters already hold is skipped); then the same edit at
    the next ``retry_layers`` layers that causal tracing ranks highest for the fact (near the default
    layer).

    Every attempt runs the gates cheapest tier first and stops at the first tier that refuses (a
    retry also reuses the first attempt's probes and ``before`` measurements), so an attempt that passes
    has run every gate and one that fails costs less. When retries are possible and none passes, the
    first attempt's skipped gates are run at the end, so the refusal shown has every gate's verdict.

    Returns the first attempt the gates pass (else the first attempt), with a summary of every attempt
    in ``attempts`` and the parameters it was computed with in ``params``.
    Methods without a single ``layer`` parameter, and calls that fixed it (``"layer"`` in ``fixed``), are
    not moved to other layers. Each retry's summary names it under ``retry`` (the variant's name, or ``layer N``).
    """
    import dataclasses

    from cathrepo.edits.base import get_method
    from cathrepo.gates.carry import GateCarry

    method_cls = get_method(method_name)
    carry = GateCarry()
    moving = retry_layers > 0 and "layer" not in fixed and hasattr(params, "layer")
    variants = list(method_cls.retry_variants) if retry_variants else []
    first = run_pipeline(model, tokenizer, facts, method=method_cls(params), env=env, carry=carry,
                         fail_fast=moving or bool(variants), **pipeline)
    attempts = [attempt_summary(first, method_name)]
    if first.gates.passed or not (moving or variants):
        return dataclasses.replace(first, attempts=tuple(attempts), params=params)
    say = pipeline.get("progress") or (lambda _msg: None)

    def attempt(changed: Any, label: str) -> EditResult:
        say(f"retry {label}")
        retry = run_pipeline(model, tokenizer, facts, method=method_cls(changed), env=env, prepared=first,
                             fail_fast=True, carry=carry, **pipeline)
        attempts.append({**attempt_summary(retry, method_name), "retry": label})
        return dataclasses.replace(retry, attempts=tuple(attempts), params=changed)

    refused = [r.name for r in first.gates.failures]
    for variant in variants:
        if variant.applies(refused, fixed, params):
            retry = attempt(dataclasses.replace(params, **variant.overrides), variant.name)
            if retry.gates.passed:
                return retry
    if moving:
        say("locating other layers")
        tried = set(first.site.get("layers", ()))
        budget = len(attempts) + retry_layers
        for layer in _ranked_layers(model, tokenizer, first.facts[0], pipeline.get("active", ())):
            if layer in tried:
                continue
            if len(attempts) >= budget:
                break
            tried.add(layer)
            retry = attempt(dataclasses.replace(params, layer=layer), f"layer {layer}")
            if retry.gates.passed:
                return retry
    first = _complete(model, tokenizer, first, env, carry, **pipeline)
    attempts[0] = attempt_summary(first, method_name)
    return dataclasses.replace(first, attempts=tuple(attempts), params=params)


def _complete(model: Any, tokenizer: Any, result: EditResult, env: EditEnv, carry: GateCarry,
              **pipeline: Any) -> EditResult:
    """``result`` with the gates its fail-fast run skipped measured and judged (the refusal a user sees
    lists every gate)."""
    from cathrepo.gates.results import GateReport

    report = result.gates
    missing = [r.name for r in report.results if r.not_run]
    if not missing:
        return result
    start = time.perf_counter()
    assert result.probes is not None
    rest = _gate_edit(model, tokenizer, result.delta, result.probes, active=pipeline.get("active", ()),
                      suite=pipeline.get("suite", ()), policy=pipeline.get("policy"), base_hash=env.base_hash,
                      progress=pipeline.get("progress"), gates=missing, carry=carry,
                      after_of=pipeline.get("after_of"))
    by_name = {r.name: r for r in rest.results}
    report = GateReport(tuple(by_name.get(r.name, r) for r in report.results), report.stage, report.meta)
    seconds = {**result.seconds, "gates": result.seconds.get("gates", 0.0) + time.perf_counter() - start}
    return dataclasses.replace(result, report=report, seconds=seconds)


def _ranked_layers(model: Any, tokenizer: Any, fact: Fact, active: Sequence[Delta], window: int = 3) -> list[int]:
    """Layers within ``window`` of the family's default edit layer, best causal-trace site first (the
    MLP at the subject's tokens), traced on the model with the active edits applied."""
    from cathrepo.attribution.select import select_sites
    from cathrepo.delta import applied
    from cathrepo.models import default_edit_layer, num_layers

    center, n = default_edit_layer(model), num_layers(model)
    allowed = [j for j in range(n) if abs(j - center) <= window]
    with applied(model, *active):
        selection = select_sites(model, tokenizer, fact, method="causal_trace", component="mlp", top_k=len(allowed),
                                 layers=allowed)
    return list(selection.layers)


def _with_old_target(fact: Fact, probes: ProbeSet) -> Fact:
    """The fact with ``target_true`` set to the model's own answer (from the probes) when it had none."""
    rewrite = probes.of_kind("rewrite")
    if fact.target_true is None and rewrite and rewrite[0].other:
        return dataclasses.replace(fact, target_true=rewrite[0].other)
    return fact
