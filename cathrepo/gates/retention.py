"""Retention gate: facts the base model knows keep the base model's answer.

The sample is the first ``retention_sample`` facts of the *measured* half of a known-facts file (ROME's
known_1000 by default; the other half is what edit methods may protect, so the gate never scores a fact
an editor was told to leave alone). A fact counts when its recorded answer's first token is the base
model's top next-token prediction ("facts the base model knows"; ``retention_known_only``).

In every state the gate reads each counted fact's *lead*: the log-probability of the answer's first
token minus that of the best other token (nats; positive while the model still gives the answer). A fact
is *broken* by the change when it led before and trails after, with its lead fallen by at least
``flip_tolerance``: a paired, margin-aware count, so a near-tie tipping over does not refuse an edit.
The gate fails when the broken share exceeds ``retention_max_drop``.

Every state's measurement is cached on disk by the state's content hash (the base hash and every
applied delta), so the ``before`` state of an edit is the cached ``after`` state of the edit before it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.facts.probes import KnownFact, default_known_facts_path, load_known_facts
from cathrepo.gates.base import GATES, Gate, GateRun
from cathrepo.gates.probing import broke, flip_falls
from cathrepo.gates.results import GateResult

if TYPE_CHECKING:
    from cathrepo.lm.replay import Lower


def retention_sample(ctx: GateRun, n: int) -> tuple[Path, list[KnownFact]]:
    """The known-facts file and the first ``n`` facts of its measured half."""
    path = ctx.policy.path("retention_data", ctx.root) or default_known_facts_path()
    return path, load_known_facts(path, part="measure")[:n]


def answer_leads(model: Any, tokenizer: Any, prompts: list[str], tokens: list[int],
                 batch_size: int = 64, lower: Lower | None = None) -> list[tuple[int, float]]:
    """Per prompt: (top next-token id, lead of ``tokens[i]`` over the best other next token, nats);
    ``lower`` replays the layers below a change (:mod:`cathrepo.lm.replay`)."""
    import torch

    from cathrepo.lm.scoring import score_continuations

    scores = score_continuations(model, tokenizer, prompts, [[] for _ in prompts], batch_size=batch_size,
                                 next_distribution=True, lower=lower)
    out = []
    for s, token in zip(scores, tokens, strict=True):
        assert s.next_logprobs is not None
        lp = s.next_logprobs
        rival = float(torch.cat([lp[:token], lp[token + 1 :]]).max())
        out.append((s.top1, float(lp[token]) - rival))
    return out


@GATES.register
class RetentionGate(Gate):
    """Known facts keep the base model's answer."""

    name = "retention"
    cost = 3
    carries = True
    states = ("base", "before", "after")
    cacheable = True
    cache_states = ("base", "before", "after")

    def cache_key(self, ctx: GateRun) -> str | None:
        path, _ = retention_sample(ctx, self.policy.retention_sample)
        data = hashlib.sha256(path.read_bytes()).hexdigest()
        return f"retention:v2:{data}:{self.policy.retention_sample}:{self.policy.retention_known_only}"

    def measure(self, ctx: GateRun, state: str) -> dict[str, list[float]]:
        """Base: which facts count; then the counted facts' leads in ``state``."""
        from cathrepo.lm.tokens import first_token_id

        _, facts = retention_sample(ctx, self.policy.retention_sample)
        prompts = [f.prompt for f in facts]
        if state == "base":
            answers = [first_token_id(ctx.tokenizer, f.answer) for f in facts]
            leads = answer_leads(ctx.model, ctx.tokenizer, prompts, answers, self.policy.batch_size)
            if self.policy.retention_known_only:  # the recorded answer, where the base model gives it
                counted = [i for i, (_, lead) in enumerate(leads) if lead > 0]
                tokens = [answers[i] for i in counted]
            else:  # whatever the base model answers
                counted = list(range(len(facts)))
                tokens = [top for top, _ in leads]
            base = answer_leads(ctx.model, ctx.tokenizer, [prompts[i] for i in counted], tokens, self.policy.batch_size)
            return {"counted": counted, "tokens": tokens, "leads": [lead for _, lead in base], "sampled": len(facts)}
        base = self.measured["base"]
        leads = answer_leads(ctx.model, ctx.tokenizer, [prompts[i] for i in base["counted"]], base["tokens"],
                             self.policy.batch_size, ctx.lower(state, persist=True))
        return {"leads": [lead for _, lead in leads]}

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        base = measured["base"]
        n = len(base["counted"])
        if not n:
            return GateResult(self.name, True, {"n": 0.0}, detail="the base model knows none of the sampled facts",
                              skipped=True)
        before, after = measured["before"]["leads"], measured["after"]["leads"]
        tol = self.policy.flip_tolerance
        broken = sum(broke(b, a, tol) for b, a in zip(before, after, strict=True))
        kept_before = sum(x > 0 for x in before) / n
        kept_after = sum(x > 0 for x in after) / n
        drop = broken / n
        ok = drop <= self.policy.retention_max_drop + 1e-9 and kept_after >= self.policy.retention_min
        metrics = {"retention": kept_after, "retention_before": kept_before, "drop": drop,
                   "broken": float(broken), "n": float(n), "known_fraction": n / base["sampled"]}
        thresholds = {"retention_max_drop": self.policy.retention_max_drop, "retention_min": self.policy.retention_min,
                      "flip_tolerance": tol}
        detail = "" if ok else f"{broken} known fact(s) lost their answer"
        return self.result(ok, metrics, thresholds, detail, flip_falls(before, after))
