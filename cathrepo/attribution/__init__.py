"""Attribution: where a fact lives in the network (stage ③ of DESIGN.md §2).

Three ways to score (layer, token, component) sites, each a module of its own:

- :mod:`~cathrepo.attribution.causal_trace`: corrupt the subject, restore one clean state at a time
  (ROME, Meng et al. 2022, §2.1);
- :mod:`~cathrepo.attribution.patching`: patch the activations of a teacher that has the fact in its
  context into the student that has not;
- :mod:`~cathrepo.attribution.saliency`: gradient × activation of the target's log-probability.

:mod:`~cathrepo.attribution.select` runs the methods and turns scores into the modules an edit method writes to, and
:mod:`~cathrepo.attribution.plots` draws layers × tokens heatmaps like ROME's figures. This module holds
the small pieces they share (the teacher/student alignment, the score map record) and
imports nothing heavy, so that importing the package stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cathrepo.exceptions import InvalidInputError
from cathrepo.lm.tokens import continuation_ids, special_prefix, subject_token_span

#: Components that can be scored, mapped to the family template of the scored module.
COMPONENT_TEMPLATES: dict[str, str] = {"hidden": "layer", "mlp": "mlp", "attn": "attn"}
#: The projection an adapter is attached to for each scored component (the residual has none: use the MLP's).
ADAPTER_TEMPLATES: dict[str, str] = {"hidden": "mlp_out", "mlp": "mlp_out", "attn": "attn_out"}


def check_components(components: Sequence[str]) -> tuple[str, ...]:
    unknown = [k for k in components if k not in COMPONENT_TEMPLATES]
    if unknown or not components:
        raise InvalidInputError(
            f"Unknown component(s): {', '.join(unknown) or '(none given)'}.",
            hint=f"Use one or more of: {', '.join(COMPONENT_TEMPLATES)}.",
        )
    return tuple(dict.fromkeys(components))


def module_names(model: Any, component: str) -> list[str]:
    """The scored module of ``component`` at every layer, from the family templates."""
    from cathrepo.models import family_for, num_layers

    family = family_for(model)
    return [family.layer_name(COMPONENT_TEMPLATES[component], layer) for layer in range(num_layers(model))]


# --- tokens ---------------------------------------------------------------------------------------


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


@dataclass(frozen=True)
class Aligned:
    """A student sequence (prompt [+ target]) and its teacher (context + the same tokens).

    Student position ``i`` holds the same token as teacher position ``i + shift`` for every ``i`` at or
    after ``len(special)``; the special prefix (BOS) sits at position 0 in both.

    Attributes:
        student: token ids of the student run.
        teacher: token ids of the teacher run.
        shift: teacher position minus student position of every aligned token.
        prompt_len: student length of the prompt (the target, if any, follows).
        subject: [start, end) of the subject tokens in student positions.
        target: the target's continuation ids (empty without a target).
        start: first aligned student position (after the special prefix).
    """

    student: list[int]
    teacher: list[int]
    shift: int
    prompt_len: int
    subject: tuple[int, int]
    target: list[int] = field(default_factory=list)
    start: int = 0


def align(tokenizer: Any, context: str, prompt: str, subject: str, target: str | None = None) -> Aligned:
    """Tokenize ``prompt`` (+ `` target``) alone and after ``context`` with identical prompt ids.

    The context (ended by a newline if it has none) is tokenized on its own, so a tokenizer's merges
    across the boundary cannot make the teacher's prompt tokens differ from the student's.
    """
    special = special_prefix(tokenizer)
    body = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    context = context if context.endswith("\n") else context.rstrip() + "\n"
    ctx = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    tgt = continuation_ids(tokenizer, target) if target else []
    start, end = subject_token_span(tokenizer, prompt, subject)
    offset = len(list(tokenizer(prompt)["input_ids"])) - len(body)  # specials before the body
    return Aligned(
        student=special + body + tgt,
        teacher=special + ctx + body + tgt,
        shift=len(ctx),
        prompt_len=len(special) + len(body),
        subject=(start - offset + len(special), end - offset + len(special)),
        target=tgt,
        start=len(special),
    )




# --- the score map every method returns -------------------------------------------------------------


@dataclass(frozen=True)
class ScoreMap:
    """Scores over (layer, token) for each component, with what a plot or a record needs.

    Attributes:
        method: "causal_trace", "patching" or "saliency".
        prompt: the prompt traced (for patching: the student prompt).
        subject: the subject.
        target: the answer whose probability is measured.
        tokens: the decoded prompt tokens (rows of the heatmap).
        subject_range: [start, end) of the subject tokens.
        scores: component -> (layers × tokens) nested lists.
        low: the score without help (corrupted run; student without context; 0 for saliency).
        high: the score with full help (clean run; teacher with context).
        layer_scores: component -> per-layer score used to rank sites.
        meta: method-specific settings (samples, noise, window, seed, seconds...).
    """

    method: str
    prompt: str
    subject: str
    target: str
    tokens: list[str]
    subject_range: tuple[int, int]
    scores: dict[str, list[list[float]]]
    low: float
    high: float
    layer_scores: dict[str, list[float]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def components(self) -> list[str]:
        return list(self.scores)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "prompt": self.prompt,
            "subject": self.subject,
            "target": self.target,
            "tokens": list(self.tokens),
            "subject_range": list(self.subject_range),
            "low": self.low,
            "high": self.high,
            "scores": {k: [[round(float(x), 6) for x in row] for row in v] for k, v in self.scores.items()},
            "layer_scores": {k: [round(float(x), 6) for x in v] for k, v in self.layer_scores.items()},
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreMap:
        return cls(
            method=data["method"],
            prompt=data["prompt"],
            subject=data["subject"],
            target=data["target"],
            tokens=list(data["tokens"]),
            subject_range=(int(data["subject_range"][0]), int(data["subject_range"][1])),
            scores={k: [list(map(float, r)) for r in v] for k, v in data["scores"].items()},
            low=float(data["low"]),
            high=float(data["high"]),
            layer_scores={k: list(map(float, v)) for k, v in data["layer_scores"].items()},
            meta=dict(data.get("meta") or {}),
        )
