"""The edit pipeline, ① → ⑤ of DESIGN.md §2 in one readable function.

    fact ─▶ probes ─▶ locate + compute delta ─▶ gates

No repository here: the caller (``cathrepo.repo.edit`` or a benchmark) passes the base model, the
deltas already active, their probe sets and the gate policy, and decides what to do with the result.
The model is left exactly as it was given (no deltas applied).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cathrepo.edits.base import EditContext, EditMethod, EditResult
    from cathrepo.edits.delta import Delta
    from cathrepo.facts.probes import KnownFact, ProbeSet
    from cathrepo.facts.schema import Fact
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.gates.results import GateReport


@dataclass(frozen=True)
class PipelineResult:
    """What one fact became: its probes, the computed edit and the gate report.

    Attributes:
        fact: the fact as edited (``target_true`` filled from the model when it was missing).
        probes: the edit's tests (committed as probes.jsonl).
        result: the computed delta with its site, info and training data.
        report: the gate results; ``report.passed`` decides whether it may be committed.
        seconds: wall time of each stage.
    """

    fact: Fact
    probes: ProbeSet
    result: EditResult
    report: GateReport
    seconds: dict[str, float]


def run_pipeline(
    model: Any,
    tokenizer: Any,
    fact: Fact,
    *,
    method: EditMethod,
    context: EditContext,
    active: Sequence[Delta] = (),
    suite: Sequence[ProbeSet] = (),
    policy: GatePolicy | None = None,
    known_facts: Sequence[KnownFact] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Probe, compute and gate one fact on the model with ``active`` deltas applied.

    Args:
        model: the base model with no delta applied; unchanged on return.
        fact: what to write (or forget).
        method: the edit method instance (its params already resolved).
        context: base hash, caches and corpus for the method.
        active: the deltas already active, in stack order; the new delta is computed on top of them.
        suite: the probe sets of the active edits (the regression suite).
        policy: gate thresholds (defaults when None).
        known_facts: the pool neighbours are mined from (default: the shipped known facts).
        progress: called with a short message at each stage.
    """
    from cathrepo.edits.delta import applied
    from cathrepo.facts.probes import build_probes
    from cathrepo.gates.base import run_gates

    say = progress or (lambda _msg: None)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    # ② probes, on the model as it is now (active edits applied): mined neighbours must be answers the
    #    model already gives, and a missing old target is the model's own answer.
    say("probes")
    with applied(model, *active):
        probes = build_probes(fact, model, tokenizer, known_facts)
        rewrite = probes.of_kind("rewrite")
        if fact.target_true is None and rewrite and rewrite[0].other:
            fact = dataclasses.replace(fact, target_true=rewrite[0].other)
        seconds["probes"] = time.perf_counter() - start
        # ③④ locate and compute: methods that use attribution run it inside compute.
        say(f"compute ({method.name})")
        start = time.perf_counter()
        result = method.compute(model, tokenizer, [fact], context)
        seconds["compute"] = time.perf_counter() - start
    # ⑤ gates: before = the active edits, after = active + the new delta.
    say("gates")
    start = time.perf_counter()
    report = run_gates(
        model,
        tokenizer,
        before=tuple(active),
        after=(*active, result.delta),
        probes=probes,
        suite=suite,
        policy=policy,
        stage="edit",
        base_hash=context.base_hash,
        progress=progress,
    )
    seconds["gates"] = time.perf_counter() - start
    return PipelineResult(fact=fact, probes=probes, result=result, report=report, seconds=seconds)
