"""Perplexity gate: held-out text stays as predictable as before the change.

The default text (``cathrepo/data/heldout/heldout.txt``) is short expository prose written for cathrepo,
about nothing an edit targets; ``perplexity_data`` in the policy points at other text.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from cathrepo.exceptions import InvalidInputError
from cathrepo.gates.base import GATES, Gate, GateRun
from cathrepo.gates.results import GateResult


def default_heldout_path() -> Path:
    return Path(str(resources.files("cathrepo") / "data" / "heldout" / "heldout.txt"))


@GATES.register
class PerplexityGate(Gate):
    """Relative perplexity growth on held-out text stays under the threshold."""

    name = "perplexity"
    cost = 3

    def measure(self, ctx: GateRun, state: str) -> float:
        from cathrepo.lm.scoring import perplexity

        path = self.policy.path("perplexity_data", ctx.root) or default_heldout_path()
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"Cannot read the held-out text '{path}': {exc}.") from None
        return perplexity(ctx.model, ctx.tokenizer, text)

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        before, after = measured["before"], measured["after"]
        growth = after / before - 1.0
        ok = growth <= self.policy.perplexity_max_growth + 1e-12
        detail = "" if ok else f"perplexity grew from {before:.2f} to {after:.2f}"
        return self.result(ok, {"ppl": after, "ppl_before": before, "growth": growth},
                           {"perplexity_max_growth": self.policy.perplexity_max_growth}, detail)
