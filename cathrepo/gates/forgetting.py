"""Forgetting gates: the answer is gone however it is asked, and stays gone when someone fine-tunes
(stage ⑤ of DESIGN.md §2, the ``forget`` stage).

Unlearning that only hides the answer from the one prompt it was taught on comes back when the
question is reworded or reformatted, or after a short fine-tune on unrelated text (the RMU results in
issue 14). So a forget is measured on every forget probe (the prompt and its paraphrases) in each
format shift of :func:`shifted_prompts` (as asked, a question, the tokenizer's chat template when it has
one, a few-shot prefix of other facts), and:

- ``forget_rank``: the answer's first token ranks outside the top ``forget_top_k`` next tokens (and, on a
  fact's inverse prompts, the subject's: ``out_of_top_inverse``);
- ``forget_generation``: the answer occurs in no greedy continuation, nor in ``forget_samples`` sampled
  ones (seeded, so the verdict repeats);
- ``relearn``: after ``relearn_steps`` seeded AdamW steps on the held-out text (nothing about the fact),
  the answer is still outside the top k; the gate reports how much probability came back. The weights
  are restored bit for bit afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from cathrepo.gates.base import GATES, Gate, GateRun
from cathrepo.gates.results import GateResult
from cathrepo.lm.tokens import user_turn

#: format shift -> how it wraps a cloze prompt (the chat shift is built from the tokenizer's template)
FORMATS = ("plain", "question", "chat", "fewshot")


def shifted_prompts(tokenizer: Any, prompt: str, subject: str, formats: Sequence[str]) -> list[tuple[str, str]]:
    """(format, text) of ``prompt`` in each format shift; every text ends where the answer comes next."""
    out: list[tuple[str, str]] = []
    for name in formats:
        if name == "plain":
            out.append((name, prompt))
        elif name == "question":
            out.append((name, f"Question: complete the sentence \"{prompt} ...\"\nAnswer: {prompt}"))
        elif name == "chat" and (head := user_turn(tokenizer, f"Complete the sentence: {prompt} ...")) is not None:
            out.append((name, f"{head}{prompt}"))
        elif name == "fewshot":
            out.append((name, _fewshot(subject) + prompt))
    return out


def _fewshot(subject: str, n: int = 3) -> str:
    from cathrepo.facts.probes import load_known_facts

    shots = [k for k in load_known_facts(part="protect") if subject.lower() not in k.prompt.lower()][:n]
    return "".join(f"{k.prompt} {k.answer}.\n" for k in shots)


def _rows(ctx: GateRun) -> list[tuple[str, str, str]]:
    """(format, text, answer) for every forget probe in every format shift the policy names."""
    return [row for row, _ in _sourced_rows(ctx)]


def _sourced_rows(ctx: GateRun) -> list[tuple[tuple[str, str, str], str]]:
    """:func:`_rows`, each with its probe's source (``inverse``: the relation read backwards)."""
    assert ctx.probes is not None
    subject = ctx.probes.subject or ""
    return [((fmt, text, p.target), p.source) for p in ctx.probes.of_kind("forget")
            for fmt, text in shifted_prompts(ctx.tokenizer, p.prompt, subject, ctx.policy.forget_formats)]


def answer_ranks(model: Any, tokenizer: Any, rows: Sequence[tuple[str, str, str]]) -> list[tuple[int, float]]:
    """(rank, probability) of each answer's first token as the next token of its text (rank 0 = top),
    every text read in :func:`~cathrepo.lm.scoring.score_continuations`' batches."""
    from cathrepo.lm.scoring import next_token_logprobs
    from cathrepo.lm.tokens import first_token_id

    logps = next_token_logprobs(model, tokenizer, [text for _, text, _ in rows])
    out = []
    for (_, _, answer), logp in zip(rows, logps, strict=True):
        token = first_token_id(tokenizer, answer)
        out.append((int((logp > logp[token]).sum()), float(logp[token].exp())))
    return out


class _ForgetGate(Gate):
    def skip_reason(self, ctx: GateRun) -> str | None:
        if ctx.probes is None or ctx.probes.action != "forget" or not ctx.probes.of_kind("forget"):
            return "not a forget"
        return None

    def out_of_top(self, ranks: Sequence[tuple[int, float]]) -> float:
        return sum(r >= self.policy.forget_top_k for r, _ in ranks) / max(1, len(ranks))


@GATES.register
class ForgetRankGate(_ForgetGate):
    """The answer ranks outside the top k on every forget probe in every format shift."""

    name = "forget_rank"

    def measure(self, ctx: GateRun, state: str) -> list[tuple[int, float]]:
        return ctx.once(state, "forget_ranks", lambda: answer_ranks(ctx.model, ctx.tokenizer, _rows(ctx)))

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        after, rows = measured["after"], _rows(ctx)
        share = self.out_of_top(after)
        metrics = {"out_of_top": share, "out_of_top_before": self.out_of_top(measured["before"]),
                   "max_prob": max((p for _, p in after), default=0.0), "n": float(len(after))}
        for fmt in dict.fromkeys(f for f, _, _ in rows):
            metrics[f"out_of_top_{fmt}"] = self.out_of_top([r for r, (f, _, _) in zip(after, rows, strict=True) if f == fmt])
        inverse = [r for r, (_, source) in zip(after, _sourced_rows(ctx), strict=True) if source == "inverse"]
        if inverse:  # the subject after the relation read backwards, every format
            metrics["out_of_top_inverse"] = self.out_of_top(inverse)
        ok = share >= self.policy.forget_rank_min
        leaks = [f"{f}: {t[-60:]!r} (rank {r})" for (r, _), (f, t, _) in zip(after, rows, strict=True)
                 if r < self.policy.forget_top_k]
        return self.result(ok, metrics, {"forget_rank_min": self.policy.forget_rank_min,
                                         "forget_top_k": float(self.policy.forget_top_k)},
                           "" if ok else "answer still in the top k: " + "; ".join(leaks[:3]))


@GATES.register
class ForgetGenerationGate(_ForgetGate):
    """The answer occurs in no greedy or seeded sampled continuation of any forget probe or format shift."""

    name = "forget_generation"
    states = ("after",)
    cost = 1

    def measure(self, ctx: GateRun, state: str) -> list[bool]:
        from cathrepo.gates.generation import contains_answer
        from cathrepo.lm.decoding import greedy_continuations, sampled_continuations

        rows = _rows(ctx)
        texts = [t for _, t, _ in rows]
        tokens = self.policy.generation_tokens
        outs = greedy_continuations(ctx.model, ctx.tokenizer, texts, max_new_tokens=tokens)
        clean = [not contains_answer(text, a) for text, (_, _, a) in zip(outs, rows, strict=True)]
        for i in range(self.policy.forget_samples):  # every row's sample in one batched decode
            sampled = sampled_continuations(ctx.model, ctx.tokenizer, texts, seed=self.policy.forget_seed + i,
                                            max_new_tokens=tokens)
            clean += [not contains_answer(text, a) for text, (_, _, a) in zip(sampled, rows, strict=True)]
        return clean

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        clean = measured["after"]
        share = sum(clean) / max(1, len(clean))
        ok = share >= self.policy.forget_generation_min
        return self.result(ok, {"clean": share, "n": float(len(clean))},
                           {"forget_generation_min": self.policy.forget_generation_min},
                           "" if ok else f"{len(clean) - sum(clean)} continuation(s) still say the answer")


@GATES.register
class RelearnGate(_ForgetGate):
    """A few seeded fine-tuning steps on unrelated text do not bring the answer back into the top k."""

    name = "relearn"
    states = ("after",)
    cost = 3

    def measure(self, ctx: GateRun, state: str) -> dict[str, list[tuple[int, float]]]:
        rows = [r for r in _rows(ctx) if r[0] == "plain"]
        start = answer_ranks(ctx.model, ctx.tokenizer, rows)
        with finetuned(ctx.model, self._batches(ctx), self.policy.relearn_lr, self.policy.relearn_seed):
            relearned = answer_ranks(ctx.model, ctx.tokenizer, rows)
        return {"start": start, "relearned": relearned}

    def _batches(self, ctx: GateRun) -> list[list[int]]:
        from cathrepo.gates.perplexity import default_heldout_path

        path = self.policy.path("perplexity_data", ctx.root) or default_heldout_path()
        ids = list(ctx.tokenizer(path.read_text(encoding="utf-8"))["input_ids"])
        n = self.policy.relearn_tokens
        chunks = [ids[i : i + n] for i in range(0, max(1, len(ids) - n + 1), n)] or [ids]
        return [chunks[i % len(chunks)] for i in range(self.policy.relearn_steps)]

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        start, relearned = measured["after"]["start"], measured["after"]["relearned"]
        stays = self.out_of_top(relearned)
        came_back = sum(p for _, p in relearned) / max(1, len(relearned)) - sum(p for _, p in start) / max(1, len(start))
        ok = stays >= self.policy.relearn_min
        return self.result(ok, {"stays_forgotten": stays, "prob_came_back": came_back,
                                "best_rank": float(min((r for r, _ in relearned), default=0))},
                           {"relearn_min": self.policy.relearn_min, "forget_top_k": float(self.policy.forget_top_k)},
                           "" if ok else "fine-tuning on unrelated text brought the answer back into the top k")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def finetuned(model: Any, batches: Sequence[Sequence[int]], lr: float, seed: int) -> Iterator[None]:
    """``model`` fine-tuned one AdamW step per batch (next-token loss, seeded), restored bit for bit on exit."""
    import torch

    from cathrepo.models import model_device

    params = [p for p in model.parameters() if p.dtype.is_floating_point]
    saved = [p.detach().clone() for p in params]
    grads = [p.requires_grad for p in params]
    try:
        with _seeded(seed), torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            for batch in batches:
                ids = torch.tensor([list(batch)], device=model_device(model))
                loss = model(input_ids=ids, labels=ids).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            del opt
        yield
    finally:
        with torch.no_grad():
            for p, s, g in zip(params, saved, grads, strict=True):
                p.copy_(s)
                p.grad = None
                p.requires_grad_(g)
