"""Regression gate: every active edit keeps passing its own probes at each new edit, merge and revert.

The suite is the probe sets of the edits active in both states. A probe *breaks* when it passed before
the change and fails after it; probes that never passed (a paraphrase the edit did not generalise to)
are not held against the change. Rewrite and forget probes may not break at all by default (every edit
must keep holding); a small share of the other kinds may.

All suite probes are scored in one packed, batched pass per state. Results are cached on disk per model
state (the hash of the base and every applied delta) and probe set, so in a sequential workflow the
``before`` state of one edit is the cached ``after`` state of the previous one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cathrepo.facts.probes import ProbeSet
from cathrepo.gates.base import GATES, Gate, GateContext
from cathrepo.gates.probing import score_probes
from cathrepo.gates.results import GateResult

log = logging.getLogger(__name__)

HARD_KINDS = ("rewrite", "forget")


@GATES.register
class RegressionGate(Gate):
    """No active edit's probes that passed before the change fail after it."""

    name = "regression"

    def _kinds(self) -> tuple[str, ...]:
        return tuple(k for k in self.policy.regression_kinds if k != "generation")

    def skip_reason(self, ctx: GateContext) -> str | None:
        if not ctx.suite:
            return "no earlier edits to re-check"
        if not any(ps.of_kind(*self._kinds()) for ps in ctx.suite):
            return "the earlier edits have no probes of the checked kinds"
        return None

    def measure(self, ctx: GateContext, state: str) -> list[list[bool]]:
        kinds = self._kinds()
        cache_file = ctx.cache_path("regression", f"{ctx.state_digest(state)[:32]}.json")
        cached: dict[str, list[bool]] = {}
        if cache_file is not None and cache_file.is_file():
            try:
                cached = json.loads(cache_file.read_text())
            except (OSError, json.JSONDecodeError):
                cached = {}
        keys = [_key(ps, kinds, self.policy.regression_dtype) for ps in ctx.suite]
        missing = [i for i, k in enumerate(keys) if k not in cached]
        if missing:
            ctx.say(f"regression: scoring {len(missing)} of {len(keys)} probe sets ({state})")
            flat = [(i, p) for i in missing for p in ctx.suite[i].of_kind(*kinds)]
            model = ctx.model if self.policy.regression_dtype == "float32" else _cast(ctx.model, self.policy.regression_dtype)
            outcomes = score_probes(model, ctx.tokenizer, [p for _, p in flat], batch_size=self.policy.batch_size)
            del model
            fresh: dict[str, list[bool]] = {keys[i]: [] for i in missing}
            for (i, _), outcome in zip(flat, outcomes, strict=True):
                fresh[keys[i]].append(outcome.passed)
            cached.update(fresh)
            if cache_file is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(cached))
                tmp.replace(cache_file)
        return [cached[k] for k in keys]

    def judge(self, ctx: GateContext, measured: dict[str, Any]) -> GateResult:
        kinds = self._kinds()
        before, after = measured["before"], measured["after"]
        hard_broken, soft_broken, soft_passing, fixed, total = 0, 0, 0, 0, 0
        examples = []
        for i, ps in enumerate(ctx.suite):
            for probe, b, a in zip(ps.of_kind(*kinds), before[i], after[i], strict=True):
                total += 1
                fixed += (not b) and a
                if probe.kind not in HARD_KINDS:
                    soft_passing += b
                if b and not a:
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
            "pass_before": sum(map(sum, before)) / total, "pass_after": sum(map(sum, after)) / total,
            "broken_rewrite": float(hard_broken), "broken_other": float(soft_broken),
            "broken_fraction": soft_fraction, "fixed": float(fixed),
        }
        thresholds = {"regression_max_broken_rewrite": float(self.policy.regression_max_broken_rewrite),
                      "regression_max_broken": self.policy.regression_max_broken}
        detail = "" if ok else "broke: " + "; ".join(examples)
        return self.result(ok, metrics, thresholds, detail)


def _key(probes: ProbeSet, kinds: tuple[str, ...], dtype: str) -> str:
    return f"{probes.digest()[:24]}:{','.join(kinds)}:{dtype}"


def _cast(model: Any, dtype: str) -> Any:
    """A copy of the model (in its current state, deltas applied) in ``dtype``; the original is untouched."""
    import copy

    import torch

    return copy.deepcopy(model).to(getattr(torch, dtype))
