"""Free-generation gates: does the model *say* the new fact, and does it still write fluently?

- generation: the greedy continuation of the rewrite prompt and its paraphrases contains the new target
  (teacher-forced scores alone overstate success two- to three-fold on small models).
- fluency: ROME's weighted bi-/tri-gram entropy of longer continuations of every prompt about the
  subject (the rewrite prompt, its paraphrases and the generation prompts), paired prompt by prompt
  before and after the change and judged on the mean drop. By default (``fluency_compare``
  "common-length") each prompt's two texts are cut to the shorter one's words first: the decoder stops
  at the end of the text, and an edited model that gives the answer and a full stop would otherwise read
  as one repeating itself (calibrated on tuning records, BENCHMARKS.md). ``drop_decoded`` and
  ``drop_common`` report both forms; ``mention`` how often the texts name the new target.

Both read continuations that :func:`~cathrepo.gates.base.run_gates` decodes once for all gates, the
"before" and "after" rows in one batch. Fluency is ROME's weighted bi-/tri-gram entropy of generated
text (Meng et al. 2022, appendix): a degenerate model that repeats itself scores low.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from cathrepo.facts.templates import OPEN_PROMPTS, fill
from cathrepo.gates.base import GATES, Gate, GateRun
from cathrepo.gates.results import GateResult

_WORD = re.compile(r"\w+|[^\w\s]")


def contains_answer(text: str, answer: str) -> bool:
    """Whether ``answer`` occurs in ``text`` as whole words, ignoring case ("Paris" in "Paris, France")."""
    answer = answer.strip()
    if not answer:
        return False
    pattern = r"(?<!\w)" + re.escape(answer.lower()) + r"(?!\w)"
    return re.search(pattern, text.lower()) is not None


def words(text: str) -> list[str]:
    """The word tokens the fluency measure counts (words and punctuation marks, lower case)."""
    return _WORD.findall(text.lower())


def ngram_entropy(text: str | Sequence[str], ns: Sequence[int] = (2, 3),
                  weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of the n-gram entropies (bits) of ``text``'s word tokens (ROME's fluency measure);
    ``text`` may be the word tokens themselves."""
    tokens = words(text) if isinstance(text, str) else list(text)
    values = []
    for n, w in zip(ns, weights, strict=True):
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(w * entropy)
    return sum(values) / len(values)


def common_drop(before: str, after: str) -> float:
    """The entropy drop of one prompt with both texts cut to the shorter one's length in words.

    The decoder stops at the end-of-sequence token, and an n-gram entropy grows with the text's length:
    an edited model that answers 'goaltender.' and stops would otherwise read as a model repeating
    itself. A continuation that ended (on either side) cannot repeat past its end, so it is compared
    with as many words of the other; two continuations at full length are compared as they are.
    """
    b, a = words(before), words(after)
    n = min(len(a), len(b))
    return ngram_entropy(b[:n]) - ngram_entropy(a[:n])


def subject_prompts(ctx: GateRun, *kinds: str) -> list[str]:
    """The distinct prompts of the edit's probes of ``kinds``, in probe order."""
    assert ctx.probes is not None
    return list(dict.fromkeys(p.prompt for p in ctx.probes.of_kind(*kinds)))


@GATES.register
class GenerationGate(Gate):
    """The greedy continuation of the rewrite prompt and paraphrases names the new target."""

    name = "generation"
    states = ("after",)
    cost = 1
    reads_model = False

    def _probes(self, ctx: GateRun) -> list[Any]:
        if ctx.probes is None or ctx.probes.action == "forget":
            return []
        return ctx.probes.of_kind("rewrite", "paraphrase")

    def skip_reason(self, ctx: GateRun) -> str | None:
        if ctx.probes is None:
            return "no probes: this stage gates no single edit"
        return None if self._probes(ctx) else "no rewrite or paraphrase probes (a forget is checked by efficacy)"

    def decodes(self, ctx: GateRun) -> list[tuple[str, str, int]]:
        return [("after", p.prompt, self.policy.generation_tokens) for p in self._probes(ctx)]

    def measure(self, ctx: GateRun, state: str) -> list[str]:
        return [ctx.decoded(state, p.prompt, self.policy.generation_tokens) for p in self._probes(ctx)]

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
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
    """Continuations about the subject keep their n-gram entropy (an edit that makes the model repeat
    itself fails)."""

    name = "fluency"
    cost = 2
    reads_model = False
    carries = True
    kinds = ("rewrite", "paraphrase", "generation")

    def skip_reason(self, ctx: GateRun) -> str | None:
        if ctx.probes is None:
            return "no probes: this stage gates no single edit"
        return None if subject_prompts(ctx, *self.kinds) else "the edit has no prompts to continue"

    def prompts(self, ctx: GateRun) -> list[str]:
        """The edit's prompts about the subject, then ``fluency_prompts`` open ones (when it names one)."""
        assert ctx.probes is not None
        subject = ctx.probes.subject
        extra = [fill(t, subject) for t in OPEN_PROMPTS[: self.policy.fluency_prompts]] if subject else []
        return list(dict.fromkeys([*subject_prompts(ctx, *self.kinds), *extra]))

    def decodes(self, ctx: GateRun) -> list[tuple[str, str, int]]:
        return [(state, prompt, self.policy.fluency_tokens) for state in self.states for prompt in self.prompts(ctx)]

    def measure(self, ctx: GateRun, state: str) -> dict[str, list[str]]:
        return {"texts": [ctx.decoded(state, p, self.policy.fluency_tokens) for p in self.prompts(ctx)]}

    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        assert ctx.probes is not None
        target = ctx.probes.of_kind("rewrite", "forget")[0].target if ctx.probes.of_kind("rewrite", "forget") else ""
        before_texts, texts = measured["before"]["texts"], measured["after"]["texts"]
        before = [ngram_entropy(t) for t in before_texts]
        after = [ngram_entropy(t) for t in texts]
        decoded = [b - a for b, a in zip(before, after, strict=True)]  # per prompt, each text as decoded
        common = [common_drop(b, a) for b, a in zip(before_texts, texts, strict=True)]  # at the shorter's length
        drops = common if self.policy.fluency_compare == "common-length" else decoded
        drop = _mean(drops)
        mention = _mean([float(contains_answer(t, target)) for t in texts]) if target else float("nan")
        own = len(subject_prompts(ctx, *self.kinds))  # the edit's own prompts come first, the open ones after
        ok = drop <= self.policy.fluency_max_drop + 1e-9
        worst = max(range(len(drops)), key=lambda i: drops[i])
        detail = "" if ok else f"generations repeat themselves: {texts[worst][:80]!r}"
        return self.result(ok, {"entropy": _mean(after), "entropy_before": _mean(before), "drop": drop,
                                "drop_se": _standard_error(drops), "drop_max": max(drops),
                                "drop_decoded": _mean(decoded), "drop_common": _mean(common),
                                "drop_own": _mean(drops[:own]), "mention": mention, "n": float(len(after))},
                           {"fluency_max_drop": self.policy.fluency_max_drop}, detail)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _standard_error(values: list[float]) -> float:
    """The standard error of the mean of ``values`` (0 for fewer than two): how far the prompts' drops
    agree, so a reader sees whether the mean drop is one prompt or all of them."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
