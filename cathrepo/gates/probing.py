"""Scoring probes: one packed, batched teacher-forced pass over any number of probes.

Every gate that checks probes (efficacy, paraphrase, neighbourhood, CounterFact+, regression) goes through
:func:`score_probes`, so a probe passes or fails by one rule everywhere:

- with an ``other``: the target's length-normalised probability beats the other's (CounterFact's
  ``P(new) > P(true)`` for rewrites, ``P(true) > P(new)`` for neighbours);
- without one: the target's first token is the model's top next-token prediction;
- a forget probe: the forgotten answer's first token is no longer the top prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.facts.probes import SCORED_KINDS, Probe

if TYPE_CHECKING:
    import torch

    from cathrepo.lm.replay import Lower


@dataclass(frozen=True)
class ProbeOutcome:
    """A probe's teacher-forced scores in one model state.

    Attributes:
        target: mean log-probability of the probe's target.
        other: mean log-probability of its ``other`` answer, when it has one.
        top1_is_target: whether the target's first token is the top next-token prediction.
        next_logprobs: the next-token log-distribution after the prompt, when asked for.
    """

    probe: Probe
    target: float
    other: float | None
    top1_is_target: bool
    next_logprobs: torch.Tensor | None = None
    first_margin: float = 0.0

    @property
    def margin(self) -> float:
        """CounterFact's magnitude: ``P(target) - P(other)`` with length-normalised probabilities."""
        return math.exp(self.target) - (math.exp(self.other) if self.other is not None else 0.0)

    @property
    def lead(self) -> float:
        """By how much the probe passes (positive) or fails (negative), in nats: ``log P(target) -
        log P(other)`` (length-normalised) with an ``other``, else the target's first token against the
        best other next token (negated for a forget probe, which passes when the answer is not top)."""
        if self.probe.kind == "forget":
            return -self.first_margin
        if self.other is not None:
            return self.target - self.other
        return self.first_margin

    @property
    def passed(self) -> bool:
        if self.probe.kind == "forget":
            return not self.top1_is_target
        if self.other is None:
            return self.top1_is_target
        return self.target > self.other


def score_probes(
    model: Any,
    tokenizer: Any,
    probes: Sequence[Probe],
    *,
    batch_size: int = 64,
    next_distribution: Sequence[str] = (),
    lower: Lower | None = None,
) -> list[ProbeOutcome]:
    """Score teacher-forced probes in packed batches; keep next-token distributions of the given kinds
    (``lower``: replay the layers below a change, as :func:`~cathrepo.lm.scoring.score_continuations`)."""
    from cathrepo.lm.scoring import score_continuations
    from cathrepo.lm.tokens import first_token_id

    bad = sorted({p.kind for p in probes} - set(SCORED_KINDS))
    if bad:
        raise ValueError(f"probe kinds {bad} are decoded, not scored")
    scores = score_continuations(
        model,
        tokenizer,
        [p.prompt for p in probes],
        [[p.target] if p.other is None else [p.target, p.other] for p in probes],
        batch_size=batch_size,
        next_distribution=[p.kind in next_distribution for p in probes],
        lower=lower,
    )
    outcomes = []
    for p, s in zip(probes, scores, strict=True):
        first = first_token_id(tokenizer, p.target)
        outcomes.append(ProbeOutcome(
            probe=p,
            target=s.mean(0),
            other=s.mean(1) if p.other is not None else None,
            top1_is_target=s.top1 == first,
            next_logprobs=s.next_logprobs,
            first_margin=s.first_margin(first, 0),
        ))
    return outcomes


def flip_falls(before: Sequence[ProbeOutcome | float], after: Sequence[ProbeOutcome | float]) -> list[float]:
    """How far each probe that passed before and fails after fell (nats of lead), any size."""
    out = []
    for b, a in zip(before, after, strict=True):
        lb = b.lead if isinstance(b, ProbeOutcome) else b
        la = a.lead if isinstance(a, ProbeOutcome) else a
        if lb > 0 >= la:
            out.append(lb - la)
    return out


def broke(before: ProbeOutcome | float, after: ProbeOutcome | float, tolerance: float) -> bool:
    """Whether a probe that passed before fails after, by a fall of its lead of at least ``tolerance``.

    A flip smaller than that is a near-tie tipping over: rounding, the thread count or any harmless
    change can cause it, so it is not counted as harm (BENCHMARKS.md calibrates the tolerance on null
    edits). Outcomes or bare leads (nats) may be passed.
    """
    b = before.lead if isinstance(before, ProbeOutcome) else before
    a = after.lead if isinstance(after, ProbeOutcome) else after
    return b > 0 >= a and b - a >= tolerance


def rate(outcomes: Sequence[ProbeOutcome]) -> float:
    """Fraction of outcomes that pass (CounterFact's ES/PS/NS)."""
    return sum(o.passed for o in outcomes) / len(outcomes) if outcomes else float("nan")


def magnitude(outcomes: Sequence[ProbeOutcome]) -> float:
    """Mean ``P(target) - P(other)`` (CounterFact's EM/PM/NM)."""
    return sum(o.margin for o in outcomes) / len(outcomes) if outcomes else float("nan")
