"""CounterFact gates on the new edit's own probes (Meng et al. 2022, §3; Hoelscher-Obermaier et al. 2023).

- efficacy: ES = fraction of rewrite prompts with ``P(new) > P(old)``, EM = mean ``P(new) - P(old)``;
  for a forget request, the fraction of forget prompts whose greedy answer no longer contains the answer.
- paraphrase: PS/PM, the same on paraphrases.
- neighborhood: NS = fraction of neighbour prompts with ``P(own answer) > P(new)``, NM its magnitude;
  judged as the drop from before to after, since a small model misses some neighbours unedited.
- cfplus: CounterFact+: NKL, the KL divergence of the neighbours' next-token distribution before vs
  after, and NS+, NS with the edit's own prompt and new target prepended to each neighbour prompt.

``P`` is the length-normalised probability ``exp(mean log p)`` of a target continuation.
"""

from __future__ import annotations

from typing import Any

from cathrepo.facts.probes import SCORED_KINDS, stated
from cathrepo.gates.base import GATES, Gate, GateRun
from cathrepo.gates.probing import ProbeOutcome, broke, flip_falls, magnitude, rate, score_probes
from cathrepo.gates.results import GateResult


def edit_outcomes(ctx: GateRun, state: str) -> list[ProbeOutcome]:
    """All teacher-forced outcomes of the edit's probes in ``state``, computed once per run and state."""

    def compute() -> list[ProbeOutcome]:
        assert ctx.probes is not None
        return score_probes(ctx.model, ctx.tokenizer, ctx.probes.of_kind(*SCORED_KINDS),
                            batch_size=ctx.policy.batch_size, next_distribution=("neighborhood",),
                            lower=ctx.lower(state))

    return ctx.once(state, "edit-outcomes", compute)


def _of(outcomes: list[ProbeOutcome], *kinds: str) -> list[ProbeOutcome]:
    return [o for o in outcomes if o.probe.kind in kinds]


class _ProbeGate(Gate):
    kinds: tuple[str, ...] = ()
    carries = True

    def skip_reason(self, ctx: GateRun) -> str | None:
        if ctx.probes is None:
            return "no probes: this stage gates no single edit"
        if not ctx.probes.of_kind(*self.kinds):
            return f"the edit has no {'/'.join(self.kinds)} probes"
        return None

    def measure(self, ctx: GateRun, state: str) -> list[ProbeOutcome]:
        return _of(edit_outcomes(ctx, state), *self.kinds)


@GATES.register
class EfficacyGate(_ProbeGate):
    """The new target wins on the rewrite prompt (for a forget: the answer is gone)."""

    name = "efficacy"
    kinds = ("rewrite", "forget")

    def decodes(self, ctx: GateRun) -> list[tuple[str, str, int]]:
        if ctx.probes is None or ctx.probes.action != "forget":
            return []
        return [(state, p.prompt, self.policy.generation_tokens) for state in self.states
                for p in ctx.probes.of_kind("forget")]

    def measure(self, ctx: GateRun, state: str) -> Any:
        if ctx.probes is not None and ctx.probes.action == "forget":
            return _forget_measure(ctx, state)
        return super().measure(ctx, state)

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        if ctx.probes is not None and ctx.probes.action == "forget":
            gone, gone_before = measured["after"], measured["before"]
            rate_after = sum(gone) / len(gone)
            metrics = {"forget": rate_after, "forget_before": sum(gone_before) / len(gone_before)}
            ok = rate_after >= self.policy.forget_min
            return self.result(ok, metrics, {"forget_min": self.policy.forget_min},
                               "" if ok else f"{len(gone) - sum(gone)} prompt(s) still give the answer")
        after, before = measured["after"], measured["before"]
        es = rate(after)
        metrics = {"es": es, "em": magnitude(after), "es_before": rate(before), "em_before": magnitude(before)}
        ok = es >= self.policy.efficacy_min
        detail = "" if ok else _worst(after, "the new target does not beat the old one")
        return self.result(ok, metrics, {"efficacy_min": self.policy.efficacy_min}, detail)


def _forget_measure(ctx: GateRun, state: str) -> list[bool]:
    """Per forget probe: True when the greedy continuation no longer contains the forgotten answer."""
    from cathrepo.gates.generation import contains_answer

    assert ctx.probes is not None
    probes = ctx.probes.of_kind("forget")
    texts = [ctx.decoded(state, p.prompt, ctx.policy.generation_tokens) for p in probes]
    return [not contains_answer(t, p.target) for p, t in zip(probes, texts, strict=True)]


@GATES.register
class ParaphraseGate(_ProbeGate):
    """The new target wins on a large enough share of paraphrases."""

    name = "paraphrase"
    kinds = ("paraphrase",)

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        after, before = measured["after"], measured["before"]
        ps = rate(after)
        metrics = {"ps": ps, "pm": magnitude(after), "ps_before": rate(before), "n": float(len(after))}
        ok = ps >= self.policy.paraphrase_min
        detail = "" if ok else _worst(after, "paraphrases do not follow the edit")
        return self.result(ok, metrics, {"paraphrase_min": self.policy.paraphrase_min}, detail)


@GATES.register
class NeighborhoodGate(_ProbeGate):
    """Other subjects of the relation keep preferring their own answer over the new target."""

    name = "neighborhood"
    kinds = ("neighborhood",)

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        after, before = measured["after"], measured["before"]
        tol = self.policy.flip_tolerance
        broken = [a for a, b in zip(after, before, strict=True) if broke(b, a, tol)]
        drop = len(broken) / len(after)
        metrics = {"ns": rate(after), "nm": magnitude(after), "ns_before": rate(before), "nm_before": magnitude(before),
                   "drop": drop, "n": float(len(after))}
        ok = drop <= self.policy.neighborhood_max_drop + 1e-9
        detail = "" if ok else _worst(broken, "neighbours now give the new target")
        return self.result(ok, metrics, {"neighborhood_max_drop": self.policy.neighborhood_max_drop,
                                         "flip_tolerance": tol}, detail, flip_falls(before, after))


@GATES.register
class CounterFactPlusGate(_ProbeGate):
    """CounterFact+: neighbours' next-token distribution barely moves (NKL), also with the edit in context (NS+)."""

    name = "cfplus"
    kinds = ("neighborhood",)

    def measure(self, ctx: GateRun, state: str) -> dict[str, Any]:
        neighbours = super().measure(ctx, state)
        assert ctx.probes is not None
        rewrite = ctx.probes.of_kind("rewrite")
        plus: list[ProbeOutcome] = []
        if rewrite:
            prefix = stated(rewrite[0].prompt, rewrite[0].target)
            prefixed = [o.probe.after(prefix) for o in neighbours]
            plus = score_probes(ctx.model, ctx.tokenizer, prefixed, batch_size=ctx.policy.batch_size,
                                lower=ctx.lower(state))
        return {"dists": [o.next_logprobs for o in neighbours], "plus": plus}

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        from cathrepo.lm.scoring import kl_divergence

        before, after = measured["before"], measured["after"]
        kls = [kl_divergence(b, a) for b, a in zip(before["dists"], after["dists"], strict=True)]
        nkl = sum(kls) / len(kls)
        metrics = {"nkl": nkl}
        thresholds = {"nkl_max": self.policy.nkl_max}
        ok = nkl <= self.policy.nkl_max
        reasons = [] if ok else [f"neighbour KL {nkl:.3g} nats is above {self.policy.nkl_max}"]
        falls: list[float] = []
        if after["plus"]:
            plus_after, plus_before = rate(after["plus"]), rate(before["plus"])
            tol = self.policy.flip_tolerance
            drop = sum(broke(b, a, tol) for b, a in zip(before["plus"], after["plus"], strict=True)) / len(after["plus"])
            falls = flip_falls(before["plus"], after["plus"])
            metrics.update({"ns_plus": plus_after, "ns_plus_before": plus_before, "ns_plus_drop": drop})
            thresholds.update({"ns_plus_max_drop": self.policy.ns_plus_max_drop, "flip_tolerance": tol})
            if drop > self.policy.ns_plus_max_drop + 1e-9:
                ok = False
                reasons.append(f"NS+ fell from {plus_before:.2f} to {plus_after:.2f}")
        return self.result(ok, metrics, thresholds, "; ".join(reasons), falls)


def _worst(outcomes: list[ProbeOutcome], what: str) -> str:
    failing = [o for o in outcomes if not o.passed]
    if not failing:
        return what
    o = min(failing, key=lambda x: x.margin)
    return f"{what}: {o.probe.prompt!r} -> {o.probe.target!r} (P={o.margin:+.3f} vs {o.probe.other!r})"
