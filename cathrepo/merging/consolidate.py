"""Consolidation: an ordered stack of deltas becomes one delta, a pack (stage ⑦ of DESIGN.md §2).

:func:`consolidate` is the one entry point callers use. It groups the deltas' factors by module (a module
may be touched by only some of the deltas), checks that each module has one shape, merges each module with
the strategy the spec names, and reports each module's rank and truncation error, so a caller can refuse
a pack that lost too much (``cat`` is exact; ``svd:R`` may not be).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cathrepo.delta import Delta, LowRank
from cathrepo.exceptions import InvalidInputError
from cathrepo.merging.strategies import get_strategy


@dataclass(frozen=True)
class Consolidation:
    """One consolidated delta and what it cost.

    Attributes:
        delta: the merged delta (every module any input touched).
        strategy: the spec that made it, every parameter spelled out (``ties:0.2``, ``dare:0.5,seed=0``),
            so recording it is enough to make the pack again.
        ranks: module -> rank of its merged factors.
        errors: module -> ``‖ΔW − B A‖_F / ‖ΔW‖_F`` of the truncation against the strategy's own merged
            ΔW (0 for ``cat``).
    """

    delta: Delta
    strategy: str
    ranks: Mapping[str, int]
    errors: Mapping[str, float]

    @property
    def max_error(self) -> float:
        """The largest relative truncation error over the modules: the one number to gate on."""
        return max(self.errors.values(), default=0.0)


def consolidate(deltas: Sequence[Delta], strategy: str, weights: Sequence[float] | None = None,
                norms: Mapping[str, float] | None = None) -> Consolidation:
    """Merge ``deltas`` (in stack order) into one delta with the strategy ``strategy`` names.

    Args:
        deltas: the deltas to merge; at least one.
        strategy: a spec: ``cat``, ``svd:R``, ``ties[:DENSITY]``, ``dare[:P]`` (see
            :mod:`cathrepo.merging.strategies`).
        weights: one weight per delta (default 1.0 each): the merge is of ``wᵢ ΔWᵢ``.
        norms: module -> its base weight's spectral norm, for the strategies that restrain the sum
            (``clip``, ``prune``); the others ignore it.

    Raises:
        InvalidInputError: no deltas, weights that do not match, a module with two shapes, deltas of
            different base models, or an argument the strategy does not take.
        UnknownNameError: no strategy of that name.
    """
    merger = get_strategy(strategy)
    if merger.needs_norms:
        if norms is None:
            raise InvalidInputError(f"Merge strategy '{merger.name}' needs the base weights' spectral norms.",
                                    hint="Consolidate through the repository, which reads them from the base model.")
        merger = merger.with_norms(norms)
    weights = _weights(deltas, weights)
    ranks: dict[str, int] = {}
    errors: dict[str, float] = {}
    factors: dict[str, LowRank] = {}
    for name, (parts, part_weights) in sorted(_by_module(deltas, weights).items()):
        merged = merger.merge_module(name, parts, part_weights)
        factors[name], ranks[name], errors[name] = merged.factor, merged.factor.rank, merged.error
    return Consolidation(Delta(factors, _base_model(deltas)), merger.spec, ranks, errors)


def _weights(deltas: Sequence[Delta], weights: Sequence[float] | None) -> list[float]:
    if not deltas:
        raise InvalidInputError("Nothing to consolidate: no deltas were given.")
    if weights is None:
        return [1.0] * len(deltas)
    if len(weights) != len(deltas):
        raise InvalidInputError(f"{len(weights)} weights were given for {len(deltas)} deltas.",
                                hint="Give one weight per delta, or none for 1.0 each.")
    if not all(math.isfinite(w) for w in weights):
        raise InvalidInputError(f"Merge weights must be finite numbers, not {list(weights)}.")
    return [float(w) for w in weights]


def _by_module(deltas: Sequence[Delta], weights: Sequence[float]) -> dict[str, tuple[list[LowRank], list[float]]]:
    """module -> (the factors of each delta that touches it, their weights), in stack order.

    Raises:
        InvalidInputError: naming the module and the two deltas whose shapes for it differ.
    """
    groups: dict[str, tuple[list[LowRank], list[float]]] = {}
    first: dict[str, int] = {}
    for i, (delta, weight) in enumerate(zip(deltas, weights, strict=True)):
        for name, factor in delta.factors.items():
            parts, part_weights = groups.setdefault(name, ([], []))
            if parts and factor.shape != parts[0].shape:
                (o0, i0), (o1, i1) = parts[0].shape, factor.shape
                raise InvalidInputError(
                    f"Module '{name}' is {o0}×{i0} in delta {first[name]} but {o1}×{i1} in delta {i}: "
                    "they cannot be merged.", hint="Were the deltas computed for different base models?")
            first.setdefault(name, i)
            parts.append(factor)
            part_weights.append(weight)
    return groups


def _base_model(deltas: Sequence[Delta]) -> str:
    """The base model the deltas name (those that name none agree with any)."""
    named = sorted({d.base_model for d in deltas if d.base_model})
    if len(named) > 1:
        raise InvalidInputError(f"The deltas were computed for different base models: {', '.join(named)}.",
                                hint="Consolidate only deltas of one base model.")
    return named[0] if named else ""
