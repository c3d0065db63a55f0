"""Restraint: a stack's summed update held at the base weight's spectral norm (stage ⑦ of DESIGN.md §2).

A long stack of single-layer edits does not break the model through any one edit: the summed update
grows a few singular directions far past the edited weight's own largest singular value (on the
embedded model, ROME's 750 sequential edits sum to a layer-6 update whose top singular value is seven
times the weight's, BENCHMARKS.md), and every input with a component along them is pushed off. PRUNE
(Ma et al., ICLR 2025, "Perturbation-restrained sequential model editing") bounds the condition number
of the edited matrix by shrinking those directions after the edits; this module does that to any delta:

- ``clip``: every singular value of a module's update above ``factor · σ_max(W)`` is set to it;
- ``prune``: PRUNE's function, ``σ ↦ ln σ − ln b + b`` above the bound ``b = factor · σ_max(W)``, which
  keeps the order of the directions and grows only logarithmically past the bound.

Directions under the bound are kept exactly, so a short stack whose update stays under it comes back
unchanged (up to float32 rounding of the refactored factors). The caller gives each module's
``σ_max(W)`` (:func:`spectral_norm` of its base weight): this package does not hold the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from cathrepo.delta import Delta, LowRank
from cathrepo.exceptions import InvalidInputError
from cathrepo.merging.factor import DTYPE, stacked, svd_of_product, truncate

RULES = ("clip", "prune")


@dataclass(frozen=True)
class Restrained:
    """A restrained delta and, per module, what it changed.

    Attributes:
        delta: one low-rank update per module of the input.
        bound: module -> the singular value the rule holds the update at (``factor · σ_max(W)``).
        top: module -> the input update's largest singular value.
        above: module -> how many of its singular directions stood above the bound.
        change: module -> ``‖ΔW' − ΔW‖_F / ‖ΔW‖_F`` (0 when nothing stood above the bound).
    """

    delta: Delta
    bound: Mapping[str, float]
    top: Mapping[str, float]
    above: Mapping[str, int]
    change: Mapping[str, float]


def restrain(delta: Delta, norms: Mapping[str, float], rule: str = "clip", factor: float = 1.0) -> Restrained:
    """``delta`` with every module's singular values above ``factor · norms[module]`` restrained by ``rule``.

    Args:
        delta: the update to restrain, usually a whole stack consolidated exactly (``cat``).
        norms: module -> the base weight's largest singular value (spectral norm).
        rule: ``clip`` or ``prune`` (see the module docstring).
        factor: the bound as a multiple of the base weight's spectral norm (PRUNE: 1).

    Raises:
        InvalidInputError: an unknown rule, a factor that is not positive, or a module without a norm.
    """
    if rule not in RULES:
        raise InvalidInputError(f"Unknown restraint '{rule}'.", hint=f"Use one of: {', '.join(RULES)}.")
    if not (math.isfinite(factor) and factor > 0):
        raise InvalidInputError(f"The restraint's factor must be a positive number, not {factor}.")
    missing = [m for m in delta.modules if not (m in norms and norms[m] > 0)]
    if missing:
        raise InvalidInputError(f"No spectral norm of the base weight was given for {', '.join(missing)}.")
    factors: dict[str, LowRank] = {}
    bound: dict[str, float] = {}
    top: dict[str, float] = {}
    above: dict[str, int] = {}
    change: dict[str, float] = {}
    for name in delta.modules:
        b = factor * float(norms[name])
        factors[name], top[name], above[name], change[name] = restrain_module([delta.factors[name]], [1.0], b, rule)
        bound[name] = b
    return Restrained(Delta(factors, delta.base_model), bound, top, above, change)


def restrain_module(parts: Sequence[LowRank], weights: Sequence[float], bound: float,
                    rule: str = "clip") -> tuple[LowRank, float, int, float]:
    """One module's update ``Σ wᵢ ΔWᵢ`` with its singular values above ``bound`` restrained by ``rule``.

    Returns (the restrained factor, the update's largest singular value, how many of its directions stood
    above the bound, ``‖ΔW' − ΔW‖_F / ‖ΔW‖_F``). The caller has checked the rule and the bound.
    """
    b, a = stacked(parts, weights)
    if b.shape[1] < min(b.shape[0], a.shape[1]):  # few terms: through QR of the factors
        u, s, vh = svd_of_product(b, a)
    else:  # more terms than the matrix is wide: the dense update is smaller than its factors
        u, s, vh = torch.linalg.svd(b @ a, full_matrices=False)
    kept = _shrunk(s, bound, rule)  # still descending: both rules keep the order
    factor = truncate(u, kept, vh, max_rank=kept.numel()).factor  # rounding noise dropped, rank >= 1
    total = float(s.square().sum())
    change = math.sqrt(float((s - kept).square().sum()) / total) if total > 0 else 0.0
    return factor, float(s[0]) if s.numel() else 0.0, int((s > bound).sum()), change


def spectral_norm(weight: torch.Tensor) -> float:
    """A base weight's largest singular value (in float64), the bound's unit."""
    return float(torch.linalg.matrix_norm(weight.detach().to(DTYPE), ord=2))


def _shrunk(s: torch.Tensor, bound: float, rule: str) -> torch.Tensor:
    """The singular values ``s`` (float64, descending) after the rule; those at or under ``bound`` unchanged."""
    s = s.to(DTYPE)
    if rule == "clip":
        return s.clamp(max=bound)
    return torch.where(s > bound, torch.log(s.clamp(min=bound)) - math.log(bound) + bound, s)
