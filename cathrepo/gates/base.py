"""Gates: the registry and :func:`run_gates` (stage ⑤ of DESIGN.md §2); the base class and the run it
hands every gate live in :mod:`cathrepo.gates.gate` and are imported from here too.

A gate measures the model in one or more *states* and then judges the measurements:

- ``base``: the base model, no edits (retention and MMLU baselines; cached on disk by base hash),
- ``before``: the active edits before the change,
- ``after``: the active edits after the change (a new edit: before + [new]; a revert: before minus one).

The model handed to :func:`run_gates` has no delta applied. Each state is entered once with
:func:`~cathrepo.delta.applied`, every gate that needs it measures, and the weights are restored bit
for bit on exit, so the model is unchanged afterwards whatever happens (kept as a test).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cathrepo.delta import Delta, applied
from cathrepo.exceptions import CathrepoError
from cathrepo.facts.probes import ProbeSet
from cathrepo.gates.cache import load_cached, store_cached
from cathrepo.gates.carry import GateCarry, keep_carry, seed_carry
from cathrepo.gates.decodes import BesideDecode, decode_beside, decode_requests, decodes_unchanged_state
from cathrepo.gates.gate import STATES, Gate, GateRun
from cathrepo.gates.policy import STAGES, GatePolicy
from cathrepo.gates.results import GateReport, GateResult
from cathrepo.lm.scoring import between_batches
from cathrepo.registry import Registry

__all__ = ["GATES", "STATES", "Gate", "GateRun", "run_gates"]

log = logging.getLogger(__name__)

GATES: Registry[type[Gate]] = Registry(
    "gate",
    "cathrepo.gates",
    builtins={**dict.fromkeys(("efficacy", "paraphrase", "neighborhood", "cfplus"),
                              "cathrepo.gates.counterfact"),
              "generation": "cathrepo.gates.generation", "fluency": "cathrepo.gates.generation",
              "regression": "cathrepo.gates.regression", "retention": "cathrepo.gates.retention",
              "mmlu": "cathrepo.gates.mmlu", "perplexity": "cathrepo.gates.perplexity",
              "norms": "cathrepo.gates.norms",
              **dict.fromkeys(("forget_rank", "forget_generation", "relearn"), "cathrepo.gates.forgetting")},
)


def run_gates(
    model: Any,
    tokenizer: Any,
    *,
    before: Sequence[Delta] = (),
    after: Sequence[Delta] = (),
    probes: ProbeSet | None = None,
    suite: Sequence[ProbeSet] = (),
    policy: GatePolicy | None = None,
    stage: str = "edit",
    gates: Sequence[str] | None = None,
    base_hash: str = "unknown",
    cache_dir: Path | None = None,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
    fail_fast: bool = False,
    carry: GateCarry | None = None,
) -> GateReport:
    """Run the gates of ``stage`` on the change from ``before`` to ``after``.

    Args:
        model: the base model with no delta applied; it is bit-identical when this returns.
        before: the active deltas before the change, in stack order.
        after: the active deltas after it (new edit: ``[*before, new]``; revert: ``before`` minus one).
        probes: the probes of the edit being gated (None for revert, merge, promote).
        suite: the probe sets of the edits that must keep working (active in both states).
        policy: thresholds and stage selection (default: :class:`GatePolicy` defaults).
        gates: run these gates instead of the policy's list for ``stage``.
        base_hash: sha256 of the base weights; enables on-disk caches under ``cache_dir``.
        cache_dir: cache root (default: ``<cathrepo cache>/gates`` when ``base_hash`` is known).
        root: directory the policy's relative data paths resolve against.
        progress: called with a short message as each state and gate starts (the CLI drives a bar).
        fail_fast: run the gates in cost tiers (own probes, then the 12-token generation check, then
            fluency's longer decodes, then the suite and known facts) and stop after the first tier that
            refuses; the gates not run are reported as skipped with ``not_run``.
        carry: kept across runs that gate the same edit on the same ``before`` state (its retries
            at other layers): their ``base``/``before`` measurements and decodes are reused, not redone.
    """
    from cathrepo.models import cache_dir as default_cache

    if stage not in STAGES:
        raise CathrepoError(f"Unknown gate stage '{stage}'.", hint=f"Stages are {', '.join(STAGES)}.")
    policy = policy or GatePolicy()
    names = list(gates) if gates is not None else list(policy.gates_for(stage))
    if cache_dir is None and base_hash != "unknown":
        cache_dir = default_cache() / "gates"
    ctx = GateRun(model, tokenizer, tuple(before), tuple(after), probes, tuple(suite), policy, stage,
                      base_hash, cache_dir, root, progress)
    # 1. instantiate, and set aside gates with nothing to measure
    active: list[Gate] = []
    results: dict[str, GateResult] = {}
    for name in names:
        gate = GATES.get(name)(policy)
        reason = gate.skip_reason(ctx)
        if reason:
            results[name] = GateResult(name, True, detail=reason, skipped=True)
        else:
            active.append(gate)
    seed_carry(ctx, active, carry)
    # 2. cheap gates first; with fail_fast, a tier with a refusal ends the run. A decoding pass costs its
    #    longest budget whatever the rows, so at the first tier that decodes, every gate's continuations
    #    are decoded in one pass (the own-probe tier, which decodes nothing, can refuse before it) unless
    #    fail_fast and only new-state rows are left (a retry): then each tier decodes its own, shortest first.
    #    Where decode_beside can (the CPU, more than one thread), that pass runs in a thread beside the
    #    later tiers that decode nothing (the suite, the known facts), which are measured meanwhile; with
    #    fail_fast a refusal of the decoding gates stops them and drops what they measured, so the report
    #    is the one decoding first gives (_measure_beside).
    decode_all = not fail_fast or decodes_unchanged_state(ctx, active)
    for tier in sorted({g.cost for g in active}):
        tier_gates = [g for g in active if g.cost == tier]
        gates_now = [g for g in tier_gates if g.name not in results]
        if decode_all and any(g.decodes(ctx) for g in gates_now):
            later = [g for g in active if g.cost > tier and not g.decodes(ctx)]
            running = decode_beside(ctx, active) if later else None
            if running is None:
                decode_requests(ctx, active)
            else:
                results.update(_measure_beside(ctx, active, later, running, fail_fast))
                gates_now = [g for g in tier_gates if g.name not in results]
            decode_all = False
        results.update(_run_tier(ctx, gates_now))
        if fail_fast and any(not results[g.name].passed for g in tier_gates):
            for g in active:
                if g.name not in results:
                    results[g.name] = GateResult(g.name, True, skipped=True, not_run=True,
                                                 detail="not run: a cheaper gate already refused this attempt")
            break
    if carry is not None:
        keep_carry(ctx, active, carry)
    return GateReport(tuple(results[name] for name in names), stage,
                      {"before": len(ctx.before), "after": len(ctx.after), "suite": len(ctx.suite),
                       "base_hash": base_hash})


class _Abandon(Exception):  # noqa: N818 - control flow, never seen outside run_gates
    """The decoding gates refused while later tiers were measured beside the decode: stop those."""


def _measure_beside(ctx: GateRun, active: Sequence[Gate], later: Sequence[Gate], running: BesideDecode,
                    fail_fast: bool) -> dict[str, GateResult]:
    """Measure and judge ``later`` while ``running`` decodes. The gates that judge only the decode are
    judged tier by tier as soon as it is done (between two scoring batches); with ``fail_fast`` a tier
    of them that refuses stops there, and ``later`` is dropped from the results whether or not it was
    measured, so the caller reports it not run, as it would without the decode beside."""
    early = [g for g in active if g.decodes(ctx) and not g.reads_model]
    judged: dict[str, GateResult] = {}
    refused: list[bool] = []

    def judge_early() -> None:
        running.finish()
        for tier in sorted({g.cost for g in early}):
            judged.update(_run_tier(ctx, [g for g in early if g.cost == tier]))
            if fail_fast and any(not r.passed for r in judged.values()):
                refused.append(True)
                return

    def settle() -> None:
        running.settle()
        if running.done.is_set() and early and not judged:
            judge_early()
            if refused:
                raise _Abandon

    beside: dict[str, GateResult] = {}
    try:
        with between_batches(settle):
            beside = _run_tier(ctx, later)
    except _Abandon:
        pass
    finally:
        running.finish()
    if early and not judged:
        judge_early()
    return judged if refused else {**judged, **beside}


def _run_tier(ctx: GateRun, gates: Sequence[Gate]) -> dict[str, GateResult]:
    """Decode, measure state by state (each state applied once, restored bit for bit) and judge ``gates``."""
    decode_requests(ctx, gates)
    measured: dict[str, dict[str, Any]] = {g.name: g.measured for g in gates}
    seconds: dict[str, float] = {g.name: 0.0 for g in gates}
    errors: dict[str, str] = {}
    for state in STATES:
        users = [g for g in gates if state in g.states and g.name not in errors]
        if state == "before" and not ctx.before:  # the base model again: reuse its measurements
            for g in users:
                if "base" in measured[g.name]:
                    measured[g.name]["before"] = measured[g.name]["base"]
        todo = [g for g in users if state not in measured[g.name] and not load_cached(ctx, g, state, measured)]
        if not todo:
            continue
        ctx.say(f"measuring {state} ({len(ctx.deltas(state))} edits applied)")
        reads = any(g.reads_model for g in todo)
        with applied(ctx.model, *ctx.deltas(state)) if reads else contextlib.nullcontext():
            for gate in todo:
                ctx.say(f"{gate.name}: {state}")
                t0 = time.perf_counter()
                try:
                    measured[gate.name][state] = gate.measure(ctx, state)
                except CathrepoError as exc:
                    errors[gate.name] = str(exc)
                seconds[gate.name] += time.perf_counter() - t0
                if gate.name not in errors:
                    store_cached(ctx, gate, state, measured)
    results = {}
    for gate in gates:
        if gate.name in errors:
            results[gate.name] = GateResult(gate.name, False, detail=f"error: {errors[gate.name]}",
                                            seconds=seconds[gate.name])
        else:
            results[gate.name] = gate.judge(ctx, measured[gate.name]).with_seconds(seconds[gate.name])
    return results
