"""Low-rank factoring of a module's merged ΔW (stage ⑦ of DESIGN.md §2).

Every strategy but ``cat`` ends here: a truncated SVD of the module's merged (out, in) update, kept to
``min(rank, numerical rank)`` singular directions, with the relative Frobenius error of the cut, so a
caller can gate on it. All of it runs in float64 (the inputs are float32 factors, whose products float64
holds almost exactly), so the numerical rank is that of the exact sum up to float64 rounding; the factors
handed back are float32, the dtype deltas are stored in.

Two ways to the same SVD:

- :func:`factor_product` for a sum of low-rank terms ``[w₁s₁B₁ … wₙsₙBₙ] @ [A₁; …; Aₙ]`` of total rank
  K below ``min(out, in)``: QR of both stacked factors, then the SVD of the small K×K core
  (``B = Q_b R_b``, ``Aᵀ = Q_a R_a``, ``B A = Q_b (R_b R_aᵀ) Q_aᵀ``), never forming the dense matrix;
- :func:`factor_dense` for a dense ΔW (what TIES and DARE produce, or a stack whose K is not small):
  one SVD of the (out, in) matrix. At 576×1536 that is well under a second, so it is not worth more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cathrepo.delta import LowRank

DTYPE = torch.float64
#: Singular values below ``max(out, in) · ε(float64)`` times the size of the update (or of the terms it
#: sums, when they cancel) are float64 rounding noise (NumPy's ``matrix_rank`` rule); they count as zero.
#: A float32 threshold would be too coarse: a small edit packed with a large one would vanish.
_NOISE = torch.finfo(DTYPE).eps


@dataclass(frozen=True)
class Factored:
    """One module's merged update and what refactoring it cost.

    Attributes:
        factor: the update as float32 factors (rank at least 1: a zero update keeps one zero column,
            because a PEFT file cannot hold rank 0).
        error: ``‖ΔW − B A‖_F / ‖ΔW‖_F`` of the truncation (0 when nothing was cut or ΔW is 0).
    """

    factor: LowRank
    error: float = 0.0


def dense(factor: LowRank, weight: float = 1.0) -> torch.Tensor:
    """``weight · scale · B @ A`` in float64, (out, in)."""
    return (factor.B.to(DTYPE) @ factor.A.to(DTYPE)) * (factor.scale * weight)


def stacked(factors: Sequence[LowRank], weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The stacked factors ``[w₁s₁B₁ … wₙsₙBₙ]`` (out, K) and ``[A₁; …; Aₙ]`` (K, in) in float64.

    Their product is ``Σ wᵢ ΔWᵢ`` exactly: the weights and scales go into B only, so no cross terms
    ``Bᵢ Aⱼ`` appear (the product is block-diagonal in the stacked rank).
    """
    device = factors[0].B.device
    b = torch.cat([f.B.to(device, DTYPE) * (f.scale * w) for f, w in zip(factors, weights, strict=True)], dim=1)
    a = torch.cat([f.A.to(device, DTYPE) for f in factors], dim=0)
    return b, a


def svd_of_product(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD ``U, S, Vh`` of ``b @ a`` through QR of the factors, without forming ``b @ a``.

    Args:
        b: (out, K); a: (K, in).

    Returns:
        U (out, k), S (k,) descending, Vh (k, in) with k = min(out, in, K).
    """
    qb, rb = torch.linalg.qr(b)  # (out, p), (p, K) with p = min(out, K)
    qa, ra = torch.linalg.qr(a.T)  # (in, q), (q, K) with q = min(in, K)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)  # core (p, q)
    return qb @ u, s, vh @ qa.T


def factor_product(b: torch.Tensor, a: torch.Tensor, max_rank: int) -> Factored:
    """Truncated SVD of ``b @ a`` (float64 stacked factors, see :func:`stacked`) to ``max_rank``.

    Takes the QR path when the stacked rank is below ``min(out, in)`` and the dense one otherwise (then
    the QR of a tall K-column stack costs more than the product it avoids).
    """
    terms = float(torch.linalg.norm(b) * torch.linalg.norm(a))  # ≥ ‖b @ a‖: the noise scale if terms cancel
    if b.shape[1] < min(b.shape[0], a.shape[1]):
        return truncate(*svd_of_product(b, a), max_rank=max_rank, reference=terms)
    return factor_dense(b @ a, max_rank, reference=terms)


def factor_dense(delta_w: torch.Tensor, max_rank: int, *, reference: float = 0.0) -> Factored:
    """Truncated SVD of a dense (out, in) update to ``max_rank`` (``reference``: see :func:`truncate`)."""
    u, s, vh = torch.linalg.svd(delta_w.to(DTYPE), full_matrices=False)
    return truncate(u, s, vh, max_rank=max_rank, reference=reference)


def numerical_rank(s: torch.Tensor, shape: tuple[int, int], reference: float = 0.0) -> int:
    """How many singular values (descending) stand above float64 rounding noise of ``max(s₀, reference)``."""
    size = max(float(s[0]) if s.numel() else 0.0, reference)
    return int((s > size * max(shape) * _NOISE).sum()) if size > 0 else 0


def truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, *, max_rank: int,
             reference: float = 0.0) -> Factored:
    """Keep the top ``min(max_rank, numerical rank)`` directions as ``B = U S`` (out, k), ``A = Vh`` (k, in).

    The error is computed from the singular values cut off, ``sqrt(Σ_{i>k} sᵢ²) / sqrt(Σ sᵢ²)``, which
    equals the Frobenius error of the truncation (Eckart–Young) without forming either matrix.

    Args:
        reference: the size of the terms the update sums (0: the update's own), so that terms that
            cancel leave rank 0 instead of a rank of rounding noise.
    """
    rank = numerical_rank(s, (u.shape[0], vh.shape[1]), reference)
    keep = max(1, min(max_rank, rank))
    total = float(s.square().sum())
    error = math.sqrt(float(s[keep:].square().sum()) / total) if rank > 0 else 0.0
    b = (u[:, :keep] * s[:keep]).float().contiguous() if rank > 0 else u.new_zeros(u.shape[0], 1).float()
    return Factored(LowRank(b, vh[:keep].float().contiguous(), 1.0), error)
