"""Regression gate: every active edit keeps passing its own probes at each new edit, merge and revert.

The suite is the probe sets of the edits active in both states. A probe *breaks* when it passed before
the change and fails after it with its lead fallen by at least ``flip_tolerance`` (a near-tie tipping
over is not harm); probes that never passed (a paraphrase the edit did not generalise to)
are not held against the change. Rewrite and forget probes may not break at all by default (every edit
must keep holding); a small share of the other kinds may.

Scale: at the edit stage the gate checks every active edit's rewrite (and forget) probes, and all probe
kinds of the edits that share the new edit's relation or subject, where interference concentrates; merge,
promote and revision stages check every kind of every edit (``regression_fast_kinds`` sets this; empty
means every kind everywhere). All selected probes are scored in one packed, batched pass per state, and
each probe's outcome is cached on disk per model state (the hash of the base and every applied delta), so
in a sequential workflow the ``before`` state of one edit is the cached ``after`` state of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from cathrepo.facts.probes import HARD_KINDS, Probe, ProbeSet
from cathrepo.files import atomic_write
from cathrepo.gates.base import GATES, Gate, GateRun
from cathrepo.gates.probing import broke, flip_falls, score_probes
from cathrepo.gates.results import GateResult
from cathrepo.lm.precision import cast_copy

log = logging.getLogger(__name__)

FAST_STAGES = ("edit", "forget")


@GATES.register
class RegressionGate(Gate):
    """No active edit's probes that passed before the change fail after it."""

    name = "regression"
    cost = 3
    carries = True

    def selection(self, ctx: GateRun) -> list[list[Probe]]:
        """Per suite probe set, the probes this run checks."""
        full = tuple(k for k in self.policy.regression_kinds if k != "generation")
        fast = tuple(self.policy.regression_fast_kinds)
        if ctx.stage not in FAST_STAGES or not fast:
            return [ps.of_kind(*full) for ps in ctx.suite]
        return [ps.of_kind(*(full if _related(ps, ctx.probes) else fast)) for ps in ctx.suite]

    def skip_reason(self, ctx: GateRun) -> str | None:
        if not ctx.suite:
            return "no earlier edits to re-check"
        if not any(self.selection(ctx)):
            return "the earlier edits have no probes of the checked kinds"
        return None

    def measure(self, ctx: GateRun, state: str) -> list[list[float]]:
        """Each selected probe's lead (nats; positive = passing) in ``state``."""
        chosen = self.selection(ctx)
        dtype = self.policy.regression_dtype
        cache_file = ctx.cache_path("regression", f"{ctx.state_digest(state)[:32]}-{dtype}-lead.json")
        cached = _read(cache_file)
        keys = [[_key(p) for p in probes] for probes in chosen]
        missing = {k: p for probes, ks in zip(chosen, keys, strict=True) for p, k in zip(probes, ks, strict=True)
                   if k not in cached}
        if missing:
            ctx.say(f"regression: scoring {len(missing)} of {sum(map(len, keys))} probes ({state})")
            model = cast_copy(ctx.model, dtype)
            outcomes = score_probes(model, ctx.tokenizer, list(missing.values()), batch_size=self.policy.batch_size)
            del model
            cached.update({k: o.lead for k, o in zip(missing, outcomes, strict=True)})
            _write(cache_file, cached)
        return [[cached[k] for k in ks] for ks in keys]

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        chosen = self.selection(ctx)
        before, after = measured["before"], measured["after"]
        hard_broken, soft_broken, soft_passing, fixed, total = 0, 0, 0, 0, 0
        examples = []
        tol = self.policy.flip_tolerance
        for i, (ps, probes) in enumerate(zip(ctx.suite, chosen, strict=True)):
            for probe, b, a in zip(probes, before[i], after[i], strict=True):
                total += 1
                fixed += b <= 0 < a
                if probe.kind not in HARD_KINDS:
                    soft_passing += b > 0
                if broke(b, a, tol):
                    if probe.kind in HARD_KINDS:
                        hard_broken += 1
                    else:
                        soft_broken += 1
                    if len(examples) < 3:
                        examples.append(f"edit {i} ({ps.subject}) {probe.kind} {probe.prompt!r} -> {probe.target!r}")
        soft_fraction = soft_broken / soft_passing if soft_passing else 0.0
        ok = (hard_broken <= self.policy.regression_max_broken_rewrite
              and soft_fraction <= self.policy.regression_max_broken + 1e-12)
        metrics = {
            "edits": float(len(ctx.suite)), "probes": float(total),
            "pass_before": sum(x > 0 for xs in before for x in xs) / total,
            "pass_after": sum(x > 0 for xs in after for x in xs) / total,
            "broken_rewrite": float(hard_broken), "broken_other": float(soft_broken),
            "broken_fraction": soft_fraction, "fixed": float(fixed),
        }
        thresholds = {"regression_max_broken_rewrite": float(self.policy.regression_max_broken_rewrite),
                      "regression_max_broken": self.policy.regression_max_broken, "flip_tolerance": tol}
        detail = "" if ok else "broke: " + "; ".join(examples)
        falls = flip_falls([x for xs in before for x in xs], [x for xs in after for x in xs])
        return self.result(ok, metrics, thresholds, detail, falls)


def _related(probes: ProbeSet, changed: ProbeSet | None) -> bool:
    """Whether an active edit shares the changed edit's relation or subject (or nothing is known)."""
    if changed is None:
        return True
    same_relation = probes.relation_id is not None and probes.relation_id == changed.relation_id
    return same_relation or (bool(probes.subject) and probes.subject == changed.subject)


def _key(probe: Probe) -> str:
    text = json.dumps(probe.to_dict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read(path: Any) -> dict[str, float]:
    if path is None or not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError):
        return {}


def _write(path: Any, cached: dict[str, float]) -> None:
    if path is None:
        return
    atomic_write(path, json.dumps(cached).encode(), make_parents=True)
