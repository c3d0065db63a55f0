"""The output head as a function of final hidden states, soft-capped where the model caps its logits.

Running the body and then the head only at the positions a score or loss reads saves the vocabulary
projection everywhere else (on a small model the head is a fifth of the work per token). Gemma-2's final
logit soft-capping, ``tanh(logits / cap) · cap``, is applied here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def logit_cap(model: Any) -> float | None:
    """The model's final logit soft-cap (Gemma-2), or None."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    cap = getattr(config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The output embedding applied to final-norm states, soft-capped where the model caps."""
    import torch

    logits = model.get_output_embeddings()(hidden)
    cap = logit_cap(model)
    return torch.tanh(logits / cap) * cap if cap else logits


def hidden_and_head(model: Any) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor]] | None:
    """The model's body (returns the final hidden states) and its output head as a function, or None
    for an architecture that does not split this way (then callers run the whole model)."""
    body = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or body is model or head is None:
        return None
    return body, lambda hidden: head_logits(model, hidden)
