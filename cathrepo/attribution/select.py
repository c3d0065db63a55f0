"""Site selection: turn attribution scores into the modules an edit writes to (stage ③ → ④).

``select_sites`` runs one locator on a fact, ranks the layers by its per-layer score and names the
projection an adapter is attached to at each chosen layer, from the family templates (the MLP output
projection for "mlp" and "hidden", the attention output projection for "attn"). The summary goes into
the edit record, so a reviewer sees why the edit sits where it sits.

What each locator scores per layer:

- ``patching`` (the default here; the LoRA trainer defaults to ``causal_trace``): the gain in log p(new target) in the student after patching the teacher's
  (fact in context) module outputs at the subject's tokens: where, for this subject, the new fact
  would have to be written (see :mod:`~cathrepo.attribution.patching` for why not the last token).
- ``causal_trace``: p(true answer) with the subject corrupted and one module's clean output restored,
  best over the subject tokens. Where the old fact is recalled (ROME's choice of layer).
- ``saliency``: |gradient × activation| of log p(new target), summed over the tokens from the subject on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cathrepo.attribution import ADAPTER_TEMPLATES, ScoreMap, align, check_components
from cathrepo.attribution.causal_trace import trace
from cathrepo.attribution.patching import layer_gains, patch
from cathrepo.attribution.saliency import saliency
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.passage import teacher_context
from cathrepo.facts.schema import Fact
from cathrepo.lm.tokens import first_token_id, subject_token_span

METHODS = ("patching", "causal_trace", "saliency")


@dataclass(frozen=True)
class SiteSelection:
    """The chosen edit sites and the scores that chose them.

    Attributes:
        method: the locator ("patching", "causal_trace", "saliency").
        component: the scored component ("mlp", "attn", "hidden").
        layers: chosen layers, best first.
        modules: the module names an adapter is attached to, one per chosen layer.
        scores: component -> per-layer score (higher is a better site).
        seconds: wall time of the attribution.
        details: method-specific numbers (baselines, facts scored).
    """

    method: str
    component: str
    layers: list[int]
    modules: list[str]
    scores: dict[str, list[float]]
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready record for ``edit.json``."""
        ranked = self.scores[self.component]
        return {
            "method": self.method,
            "component": self.component,
            "layers": list(self.layers),
            "modules": list(self.modules),
            "top_scores": {str(layer): round(float(ranked[layer]), 6) for layer in self.layers},
            "best_layers": _ranking(ranked)[:5],
            "seconds": round(self.seconds, 3),
            **{k: v for k, v in self.details.items() if isinstance(v, int | float | str)},
        }


def _ranking(scores: Sequence[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda layer: (-scores[layer], layer))


def layer_scores(model: Any, tokenizer: Any, fact: Fact, *, method: str, component: str,
                 context: str | None = None, samples: int = 3) -> tuple[list[float], dict[str, Any]]:
    """Per-layer scores of one fact by one locator, plus the baselines it measured against."""
    if method == "patching":
        al = align(tokenizer, context or teacher_context(fact), fact.prompt, fact.subject)
        scores, low, high = layer_gains(model, tokenizer, al, first_token_id(tokenizer, fact.target_new), component)
        return scores, {"low": low, "high": high}
    if method == "causal_trace":
        s0, s1 = subject_token_span(tokenizer, fact.prompt, fact.subject)
        result = trace(model, tokenizer, fact.prompt, fact.subject, fact.target_true, components=(component,),
                       samples=samples, tokens=range(s0, s1), precision="float32")  # the same sites on every CPU
        return result.layer_scores[component], {"low": result.low, "high": result.high}
    if method == "saliency":
        result = saliency(model, tokenizer, fact.prompt, fact.subject, fact.target_new, components=(component,))
        return result.layer_scores[component], {"high": result.high}
    raise InvalidInputError(f"Unknown attribution method '{method}'.", hint=f"Use one of: {', '.join(METHODS)}.")


def select_sites(
    model: Any,
    tokenizer: Any,
    fact: Fact | Sequence[Fact],
    *,
    method: str = "patching",
    component: str = "mlp",
    top_k: int = 1,
    context: str | None = None,
    layers: Sequence[int] | None = None,
) -> SiteSelection:
    """Rank the layers for an edit of ``fact`` and name the modules to adapt.

    Args:
        model: the base model (left bit-identical: only hooks and no-grad runs, or gradients that
            stop at the activations).
        tokenizer: its tokenizer.
        fact: one fact, or several (a passage's probes): their per-layer scores are averaged.
        method: "patching", "causal_trace" or "saliency".
        component: "mlp", "attn" or "hidden" (adapters for "hidden" go on the MLP output projection).
        top_k: how many layers to choose.
        context: the teacher's context for patching (a passage); None states each fact.
        layers: restrict the choice to these layers (None: any layer).
    """
    from cathrepo.models import family_for, num_layers

    started = time.perf_counter()
    check_components([component])
    if method not in METHODS:
        raise InvalidInputError(f"Unknown attribution method '{method}'.", hint=f"Use one of: {', '.join(METHODS)}.")
    facts = [fact] if isinstance(fact, Fact) else list(fact)
    if not facts:
        raise InvalidInputError("No fact to locate.")
    n = num_layers(model)
    if not 1 <= top_k <= n:
        raise InvalidInputError(f"top_k={top_k} is outside 1..{n}.", hint=f"The model has {n} layers.")
    total = [0.0] * n
    details: dict[str, Any] = {"facts": len(facts)}
    for f in facts:
        scores, base = layer_scores(model, tokenizer, f, method=method, component=component, context=context)
        total = [a + b / len(facts) for a, b in zip(total, scores, strict=True)]
        for key, value in base.items():
            details[key] = details.get(key, 0.0) + value / len(facts)
    allowed = set(range(n) if layers is None else layers)
    chosen = [layer for layer in _ranking(total) if layer in allowed][:top_k]
    family = family_for(model)
    modules = [family.layer_name(ADAPTER_TEMPLATES[component], layer) for layer in chosen]
    return SiteSelection(
        method=method,
        component=component,
        layers=chosen,
        modules=modules,
        scores={component: total},
        seconds=time.perf_counter() - started,
        details={k: round(v, 6) if isinstance(v, float) else v for k, v in details.items()},
    )



def run_methods(
    model: Any,
    tokenizer: Any,
    prompt: str,
    subject: str,
    target: str | None,
    *,
    methods: Sequence[str],
    components: Sequence[str] = ("hidden", "mlp", "attn"),
    samples: int | None = None,
    seed: int = 0,
    precision: str = "float32",
) -> dict[str, ScoreMap]:
    """Run each attribution method on one prompt (what ``cathrepo trace`` shows)."""
    results: dict[str, ScoreMap] = {}
    for method in methods:
        if method == "causal_trace":
            extra: dict[str, Any] = {"samples": samples} if samples else {}
            results[method] = trace(
                model, tokenizer, prompt, subject, target, components=components, seed=seed, precision=precision, **extra
            )
        elif method == "patching":
            if not target:
                raise InvalidInputError("Patching needs a target to put into the teacher's context.",
                                        hint="Pass --target.")
            results[method] = patch(model, tokenizer, prompt, subject, target, components=components)
        elif method == "saliency":
            results[method] = saliency(model, tokenizer, prompt, subject, target, components=components)
        else:
            raise InvalidInputError(f"Unknown attribution method '{method}'.",
                                    hint="Use causal_trace, patching, saliency or all.")
    return results
