"""Weight-norm gate: the change may not inflate the weights it touches.

Sequential editing fails by norm growth: each rank-one update adds to the edited matrix until the model
collapses (Gupta et al. 2024, "Model editing at scale leads to gradual and catastrophic forgetting").
The gate measures the Frobenius norm of every weight the change touches, before and after, and bounds
the relative growth.
"""

from __future__ import annotations

from typing import Any

from cathrepo.gates.base import GATES, Gate, GateRun
from cathrepo.gates.results import GateResult


def changed_modules(ctx: GateRun) -> list[str]:
    """Modules touched by deltas in exactly one of the two states (the change itself)."""
    before_ids = {id(d) for d in ctx.before}
    after_ids = {id(d) for d in ctx.after}
    changed = [d for d in ctx.after if id(d) not in before_ids] + [d for d in ctx.before if id(d) not in after_ids]
    return sorted({m for d in changed for m in d.modules})


@GATES.register
class NormsGate(Gate):
    """Relative Frobenius-norm growth of every weight the change touches stays small."""

    name = "norms"

    def skip_reason(self, ctx: GateRun) -> str | None:
        return None if changed_modules(ctx) else "the change touches no weight"

    def measure(self, ctx: GateRun, state: str) -> dict[str, float]:
        from cathrepo.models import get_module

        return {m: float(get_module(ctx.model, m).weight.float().norm()) for m in changed_modules(ctx)}

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        before, after = measured["before"], measured["after"]
        growth = {m: after[m] / before[m] - 1.0 for m in before if before[m] > 0}
        worst = max(growth, key=lambda m: growth[m])
        ok = growth[worst] <= self.policy.norms_max_growth + 1e-12
        metrics = {"max_growth": growth[worst], "modules": float(len(growth))}
        detail = "" if ok else f"{worst} grew by {growth[worst]:.1%}"
        return self.result(ok, metrics, {"norms_max_growth": self.policy.norms_max_growth}, detail)
