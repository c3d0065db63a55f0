"""Free-generation gates: does the model *say* the new fact, and does it still write fluently?

- generation: the greedy continuation of the rewrite prompt and its paraphrases contains the new target
  (teacher-forced scores alone overstate success two- to three-fold on small models).
- fluency: ROME's weighted bi-/tri-gram entropy of longer generations from the generation prompts,
  judged as the drop from before to after; ``mention`` reports how often they name the new target.
"""

from __future__ import annotations

from typing import Any

from cathrepo.gates.base import GATES, Gate, GateContext
from cathrepo.gates.results import GateResult


@GATES.register
class GenerationGate(Gate):
    """The greedy continuation of the rewrite prompt and paraphrases names the new target."""

    name = "generation"
    states = ("after",)

    def _probes(self, ctx: GateContext) -> list[Any]:
        if ctx.probes is None or ctx.probes.fact_kind == "forget":
            return []
        return ctx.probes.of_kind("rewrite", "paraphrase")

    def skip_reason(self, ctx: GateContext) -> str | None:
        if ctx.probes is None:
            return "no probes: this stage gates no single edit"
        return None if self._probes(ctx) else "no rewrite or paraphrase probes (a forget is checked by efficacy)"

    def measure(self, ctx: GateContext, state: str) -> list[str]:
        from cathrepo.gates.decoding import greedy_continuations

        return greedy_continuations(ctx.model, ctx.tokenizer, [p.prompt for p in self._probes(ctx)],
                                    max_new_tokens=self.policy.generation_tokens)

    def judge(self, ctx: GateContext, measured: dict[str, Any]) -> GateResult:
        from cathrepo.gates.decoding import contains_answer

        probes, texts = self._probes(ctx), measured["after"]
        hits = [contains_answer(t, p.target) for p, t in zip(probes, texts, strict=True)]
        success = sum(hits) / len(hits)
        rewrite_hit = hits[0] if probes[0].kind == "rewrite" else success
        ok = success >= self.policy.generation_min
        misses = [(p, t) for p, t, h in zip(probes, texts, hits, strict=True) if not h]
        detail = "" if ok else f"{misses[0][0].prompt!r} continues {misses[0][1]!r}"
        return self.result(ok, {"gen_success": success, "gen_rewrite": float(rewrite_hit), "n": float(len(hits))},
                           {"generation_min": self.policy.generation_min}, detail)


@GATES.register
class FluencyGate(Gate):
    """Generations keep their n-gram entropy (an edit that makes the model repeat itself fails)."""

    name = "fluency"

    def skip_reason(self, ctx: GateContext) -> str | None:
        if ctx.probes is None:
            return "no probes: this stage gates no single edit"
        return None if ctx.probes.of_kind("generation") else "the edit has no generation probes"

    def measure(self, ctx: GateContext, state: str) -> list[str]:
        from cathrepo.gates.decoding import greedy_continuations

        assert ctx.probes is not None
        prompts = [p.prompt for p in ctx.probes.of_kind("generation")]
        return greedy_continuations(ctx.model, ctx.tokenizer, prompts, max_new_tokens=self.policy.fluency_tokens)

    def judge(self, ctx: GateContext, measured: dict[str, Any]) -> GateResult:
        from cathrepo.gates.decoding import contains_answer, ngram_entropy

        assert ctx.probes is not None
        probes = ctx.probes.of_kind("generation")
        before = _mean([ngram_entropy(t) for t in measured["before"]])
        after = _mean([ngram_entropy(t) for t in measured["after"]])
        mention = _mean([float(contains_answer(t, p.target)) for p, t in zip(probes, measured["after"], strict=True)])
        ok = before - after <= self.policy.fluency_max_drop + 1e-9
        detail = "" if ok else f"generations repeat themselves: {measured['after'][0][:80]!r}"
        return self.result(ok, {"entropy": after, "entropy_before": before, "mention": mention},
                           {"fluency_max_drop": self.policy.fluency_max_drop}, detail)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
