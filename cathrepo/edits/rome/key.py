"""ROME's key side: the subject's key ``k*`` and the whitened update direction ``u = C⁻¹ k*``.

``k*`` is the input of the edited projection at the subject's last token, averaged over the bare
prompt and the generated context prefixes (ROME §3.1; r-ROME uses the same average for the value).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cathrepo.lm.tokens import subject_last_index

if TYPE_CHECKING:
    import torch


def key_vector(
    model: Any, tokenizer: Any, module: str, prompt: str, subject: str, prefixes: Sequence[str]
) -> torch.Tensor:
    """Mean input of ``module`` at the subject's last token over ``prefix + prompt`` (shape (d_in,))."""
    import torch

    from cathrepo.lm.hooks import forward_until
    from cathrepo.models import model_device

    texts = [prefix + prompt for prefix in prefixes]
    lookups = torch.tensor([subject_last_index(tokenizer, t, subject) for t in texts])
    enc = tokenizer(texts, return_tensors="pt", padding=True).to(model_device(model))
    with torch.no_grad():
        keys = forward_until(model, module, inputs=True, **enc)  # (batch, seq, d_in)
    return keys[torch.arange(len(texts)), lookups.to(keys.device)].float().mean(0)


def update_direction(cov: torch.Tensor, key: torch.Tensor, reg: float,
                     preserved: torch.Tensor | None = None) -> torch.Tensor:
    """``u = (C + P + λI)⁻¹ k*`` with ``λ = reg · tr(C)/d`` (a ridge for statistics from a small corpus).

    ``P`` is the weighted second moment of keys to preserve (:mod:`cathrepo.edits.rome.protect`), or None.
    Solved in float64; returned in float32 with unit norm (the scale cancels in ΔW = δ uᵀ / (u·k*)).
    """
    import torch

    c = cov.double().to(key.device)
    d = c.shape[0]
    ridge = reg * torch.trace(c) / d
    if preserved is not None:
        c = c + preserved.double().to(key.device)
    u = torch.linalg.solve(c + ridge * torch.eye(d, dtype=c.dtype, device=c.device), key.double())
    return (u / u.norm()).float()
