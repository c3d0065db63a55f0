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

#: Relative ridge on the Gram matrix of the kept keys (a share of its mean diagonal): keys nearly parallel
#: to k* or to each other are held approximately instead of exactly, so the update stays bounded.
KEEP_RIDGE = 1e-3


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
                     preserved: torch.Tensor | None = None, kept: torch.Tensor | None = None) -> torch.Tensor:
    """``u = (C + P + λI)⁻¹ k*`` with ``λ = reg · tr(C)/d`` (a ridge for statistics from a small corpus).

    ``P`` is the weighted second moment of keys to preserve (:mod:`cathrepo.edits.rome.protect`), or None.
    ``kept`` (m, d) are keys the update must leave exactly alone (``u · k_j = 0``, AlphaEdit's hard form):
    then ``u`` minimises ``uᵀ M u`` (``M = C + P + λI``) subject to ``u · k* = 1`` and ``Kᵀ u = 0``, that is
    ``u = M⁻¹ A (Aᵀ M⁻¹ A)⁻¹ e₁`` with ``A = [k*, K]`` (Lagrange), the Gram matrix with a relative ridge
    of ``KEEP_RIDGE`` so near-parallel keys cannot blow the update up.
    Solved in float64; returned in float32 with unit norm (the scale cancels in ΔW = δ uᵀ / (u·k*)).
    """
    import torch

    c = cov.double().to(key.device)
    d = c.shape[0]
    ridge = reg * torch.trace(c) / d
    if preserved is not None:
        c = c + preserved.double().to(key.device)
    m = c + ridge * torch.eye(d, dtype=c.dtype, device=c.device)
    if kept is None or kept.numel() == 0:
        u = torch.linalg.solve(m, key.double())
    else:
        a = torch.cat([key.double()[None], kept.double().to(key.device)]).T  # (d, 1 + m)
        y = torch.linalg.solve(m, a)
        gram = a.T @ y
        gram = gram + KEEP_RIDGE * torch.trace(gram) / gram.shape[0] * torch.eye(gram.shape[0], dtype=c.dtype, device=c.device)
        e1 = torch.zeros(gram.shape[0], dtype=c.dtype, device=c.device)
        e1[0] = 1.0
        u = y @ torch.linalg.solve(gram, e1)
    return (u / u.norm()).float()
