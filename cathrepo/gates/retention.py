"""Retention gate: a fixed sample of facts the base model knows keeps the base model's answer.

The sample is the first ``retention_sample`` facts of a known-facts file (ROME's known_1000 by default).
The base model's answer to each is its top next-token prediction after the prompt; with
``retention_known_only`` only facts where that token starts the recorded answer count ("facts the base
model knows"). Retention in a state is the share of those facts whose top prediction is unchanged. The
base measurement is cached on disk by base hash and sample.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cathrepo.facts.probes import KnownFact, default_known_facts_path, load_known_facts
from cathrepo.gates.base import GATES, Gate, GateContext
from cathrepo.gates.results import GateResult


def retention_sample(ctx: GateContext, n: int) -> tuple[Path, list[KnownFact]]:
    path = ctx.policy.path("retention_data", ctx.root) or default_known_facts_path()
    return path, load_known_facts(path)[:n]


def top1_answers(model: Any, tokenizer: Any, prompts: list[str], batch_size: int = 64) -> list[int]:
    """The top next-token id after each prompt (one packed forward pass per batch, no continuation)."""
    from cathrepo.gates.scoring import score_continuations

    return [s.top1 for s in score_continuations(model, tokenizer, prompts, [[] for _ in prompts],
                                                batch_size=batch_size)]


@GATES.register
class RetentionGate(Gate):
    """Known facts keep the base model's answer."""

    name = "retention"
    states = ("base", "before", "after")
    cacheable = True

    def cache_key(self, ctx: GateContext) -> str | None:
        path, _ = retention_sample(ctx, self.policy.retention_sample)
        data = hashlib.sha256(path.read_bytes()).hexdigest()
        return f"retention:v1:{data}:{self.policy.retention_sample}"

    def measure(self, ctx: GateContext, state: str) -> dict[str, list[int]]:
        """Top predictions on the sample; after the base state, only on the facts that count."""
        from cathrepo.gates.scoring import first_token_id

        _, facts = retention_sample(ctx, self.policy.retention_sample)
        if state == "base":
            top1 = top1_answers(ctx.model, ctx.tokenizer, [f.prompt for f in facts], self.policy.batch_size)
            known = [int(t == first_token_id(ctx.tokenizer, f.answer)) for t, f in zip(top1, facts, strict=True)]
            return {"top1": top1, "known": known}
        keep = self._counted(self.measured["base"])
        return {"top1": top1_answers(ctx.model, ctx.tokenizer, [facts[i].prompt for i in keep],
                                     self.policy.batch_size)}

    def _counted(self, base: dict[str, Any]) -> list[int]:
        return [i for i, k in enumerate(base["known"]) if k or not self.policy.retention_known_only]

    def judge(self, ctx: GateContext, measured: dict[str, Any]) -> GateResult:
        base = measured["base"]
        keep = self._counted(base)
        if not keep:
            return GateResult(self.name, True, {"n": 0.0}, detail="the base model knows none of the sampled facts",
                              skipped=True)

        def share(state: str) -> float:
            top = measured[state]["top1"]
            if "known" in measured[state]:  # a base-format measurement (before == base): every sampled fact
                top = [top[i] for i in keep]
            return sum(t == base["top1"][i] for t, i in zip(top, keep, strict=True)) / len(keep)

        before, after = share("before"), share("after")
        drop = before - after
        ok = drop <= self.policy.retention_max_drop + 1e-9 and after >= self.policy.retention_min
        metrics = {"retention": after, "retention_before": before, "drop": drop, "n": float(len(keep)),
                   "known_fraction": sum(base["known"]) / len(base["known"])}
        thresholds = {"retention_max_drop": self.policy.retention_max_drop, "retention_min": self.policy.retention_min}
        detail = "" if ok else f"{round(drop * len(keep))} known fact(s) changed their answer"
        return self.result(ok, metrics, thresholds, detail)
