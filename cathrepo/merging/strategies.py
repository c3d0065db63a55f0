"""Merge strategies: how the deltas touching one module become one update (stage ⑦ of DESIGN.md §2).

A strategy is named by a spec string, ``name[:argument][,key=value…]``: ``cat``, ``svd:8``, ``ties:0.2``,
``dare:0.5,seed=3,rank=16``. The name is looked up in :data:`STRATEGIES` (a registry like the edit
methods' one, so plug-ins can add strategies through the ``cathrepo.merge_strategies`` entry points) and
the rest is parsed into the strategy's parameters, checked, and refused with the spec's form when wrong.

Every strategy computes on the full ΔW of each module, never on A and B separately: averaging the factors
gives ``(ΣBᵢ)(ΣAⱼ)/n²``, whose cross terms ``Bᵢ Aⱼ`` belong to no edit.

- ``cat``: exact; the factors are stacked and the ranks add.
- ``svd:R``: the truncated SVD of the summed ΔW, rank ``min(R, numerical rank)``.
- ``ties``: TIES-merging (Yadav et al. 2023): trim each ΔW to its largest entries, elect each entry's
  sign by the summed trimmed values, average the entries that agree with it; then truncated SVD.
- ``dare``: DARE (Yu et al. 2024): drop each entry of each ΔW with probability p and rescale the rest by
  ``1/(1−p)``, then sum; then truncated SVD. The masks come from a generator seeded by the seed and the
  module name, so a module's result does not depend on which other modules the deltas touch.
- ``clip`` / ``prune``: the summed ΔW restrained at ``factor`` times the base weight's spectral norm
  (:mod:`cathrepo.merging.restrain`): its singular values above that bound set to it (``clip``) or
  shrunk as PRUNE does (``prune``). These need each module's base-weight norm, which the caller
  (who holds the model) gives :func:`~cathrepo.merging.consolidate.consolidate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cathrepo.delta import LowRank
from cathrepo.exceptions import InvalidInputError
from cathrepo.merging.factor import DTYPE, Factored, dense, factor_dense, factor_product, stacked
from cathrepo.merging.restrain import restrain_module
from cathrepo.registry import Registry


@dataclass(frozen=True)
class Param:
    """One parameter a spec may set: how to read it from text and what values it takes."""

    name: str
    read: Callable[[str], Any]
    ok: Callable[[Any], bool]
    says: str  # what ``ok`` accepts, for messages ("a fraction in (0, 1]")


_RANK = Param("rank", int, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
_MAX_RANK = dataclasses.replace(_RANK, ok=lambda v: v is None or _RANK.ok(v))  # None: the default rank


@dataclass(frozen=True)
class MergeStrategy:
    """Base class of the merge strategies: a frozen dataclass of parameters plus :meth:`merge_module`.

    Subclasses set ``name`` (the registry key), ``usage`` (how a spec is written, for messages) and
    ``params`` (the first one is the positional argument after the colon), declare those parameters as
    dataclass fields, and implement :meth:`merge_module`.
    """

    name: ClassVar[str] = ""
    usage: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    #: Whether the merge needs each module's base-weight spectral norm (``norms``, set by the caller).
    needs_norms: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for param in self.params:
            value = getattr(self, param.name)
            if not param.ok(value):
                raise InvalidInputError(
                    f"Merge strategy '{self.name}': {param.name} must be {param.says}, not {value!r}.",
                    hint=f"Write it as {self.usage}.",
                )

    @property
    def spec(self) -> str:
        """The spec that rebuilds this strategy, with every parameter spelled out (``ties:0.2,rank=8``)."""
        values = [(p.name, getattr(self, p.name)) for p in self.params]
        shown = [f"{k}={v}" for k, v in values[1:] if v is not None]
        head = f"{self.name}:{values[0][1]}" if values else self.name
        return ",".join([head, *shown])

    @classmethod
    def from_argument(cls, argument: str | None) -> MergeStrategy:
        """Build the strategy from the text after the colon (None when the spec has no colon)."""
        values = _read_argument(cls, argument)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and _required(f)]
        if missing:
            raise InvalidInputError(f"Merge strategy '{cls.name}' needs a value for {', '.join(missing)}.",
                                    hint=f"Write it as {cls.usage}.")
        return cls(**values)

    def with_norms(self, norms: Mapping[str, float]) -> MergeStrategy:
        """This strategy given each module's base-weight spectral norm (those with ``needs_norms`` keep it)."""
        return self

    def merge_module(self, name: str, factors: Sequence[LowRank], weights: Sequence[float]) -> Factored:
        """Merge the updates one module gets from several deltas (in stack order) into one.

        Args:
            name: the module, for messages and seeding.
            factors: each delta's factors for this module; all of one (out, in) shape.
            weights: one weight per factor; the merge is of ``wᵢ ΔWᵢ``.
        """
        raise NotImplementedError


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _read_argument(cls: type[MergeStrategy], argument: str | None) -> dict[str, Any]:
    """``"0.5,seed=3"`` → ``{"p": 0.5, "seed": 3}`` by the class's params; refuses what does not fit."""
    if argument is None:
        return {}

    def refuse(why: str) -> InvalidInputError:
        return InvalidInputError(f"Bad merge strategy '{cls.name}:{argument}': {why}.",
                                 hint=f"Write it as {cls.usage}.")

    if not cls.params:
        raise refuse(f"'{cls.name}' takes no argument")
    by_name = {p.name: p for p in cls.params}
    values: dict[str, Any] = {}
    for i, item in enumerate(argument.split(",")):
        if "=" in item:
            key, _, text = (part.strip() for part in item.partition("="))
        else:  # only the first item may leave out its name: it is the first parameter
            key, text = (cls.params[0].name if i == 0 else ""), item.strip()
        if key not in by_name:
            raise refuse(f"unknown parameter '{key or item}' (it takes {', '.join(by_name)})")
        if key in values or not text:
            raise refuse(f"{key} is given twice" if key in values else f"{key} has no value")
        try:
            values[key] = by_name[key].read(text)
        except ValueError:
            raise refuse(f"{key} must be {by_name[key].says}, not '{text}'") from None
    return values


STRATEGIES: Registry[type[MergeStrategy]] = Registry("merge strategy", "cathrepo.merge_strategies")


def get_strategy(spec: str) -> MergeStrategy:
    """The strategy a spec names, with its parameters (``"svd:8"`` → ``Svd(rank=8)``).

    Raises:
        UnknownNameError: no strategy has the name before the colon.
        InvalidInputError: the argument does not fit the strategy.
    """
    name, colon, argument = spec.strip().partition(":")
    return STRATEGIES.get(name.strip()).from_argument(argument if colon else None)


def _default_rank(factors: Sequence[LowRank]) -> int:
    """The rank a re-factored merge keeps by default: the input ranks' sum, capped by the matrix size."""
    return min(sum(f.rank for f in factors), min(factors[0].shape))


@STRATEGIES.register
@dataclass(frozen=True)
class Cat(MergeStrategy):
    """Exact merge: ``[w₁s₁B₁ … wₙsₙBₙ] @ [A₁; …; Aₙ] = Σ wᵢ ΔWᵢ``; the ranks add.

    One factor at weight 1 comes back as it is (the same tensors), so a module only one delta touches
    is not rounded at all, and consolidating a single delta reproduces it bit for bit.
    """

    name: ClassVar[str] = "cat"
    usage: ClassVar[str] = "cat (no argument)"

    def merge_module(self, name: str, factors: Sequence[LowRank], weights: Sequence[float]) -> Factored:
        if len(factors) == 1:
            only = factors[0]
            return Factored(only if weights[0] == 1.0 else only.scaled(weights[0]))
        b, a = stacked(factors, weights)
        return Factored(LowRank(b.float(), a.float(), 1.0))


@STRATEGIES.register
@dataclass(frozen=True)
class Svd(MergeStrategy):
    """Compact merge: the summed ΔW truncated to rank ``min(rank, numerical rank)``.

    The SVD goes through QR of the stacked factors when their total rank is small (see
    :func:`~cathrepo.merging.factor.factor_product`), so a pack of a hundred rank-one edits costs
    a 100×100 SVD, not a dense 576×1536 one.
    """

    name: ClassVar[str] = "svd"
    usage: ClassVar[str] = "svd:R with R a positive integer rank, e.g. svd:8"
    params: ClassVar[tuple[Param, ...]] = (_RANK,)
    rank: int

    def merge_module(self, name: str, factors: Sequence[LowRank], weights: Sequence[float]) -> Factored:
        return factor_product(*stacked(factors, weights), max_rank=self.rank)


@STRATEGIES.register
@dataclass(frozen=True)
class Ties(MergeStrategy):
    """TIES-merging of the weighted full ΔWs, then a truncated SVD to ``rank``.

    Attributes:
        density: the fraction of each ΔW's entries kept (largest magnitude first).
        rank: the rank kept; by default the inputs' ranks summed, capped by the matrix size.
    """

    name: ClassVar[str] = "ties"
    usage: ClassVar[str] = "ties:DENSITY[,rank=R] with DENSITY in (0, 1], e.g. ties:0.2"
    params: ClassVar[tuple[Param, ...]] = (Param("density", float, lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]"),
                                           _MAX_RANK)
    density: float = 0.2
    rank: int | None = None

    def merge_module(self, name: str, factors: Sequence[LowRank], weights: Sequence[float]) -> Factored:
        # Two passes keep memory at three (out, in) matrices however many deltas there are.
        pairs = list(zip(factors, weights, strict=True))
        # 1. Elect: the sign of the summed trimmed values is the side with the larger total magnitude.
        total = torch.zeros(factors[0].shape, dtype=DTYPE, device=factors[0].B.device)
        for f, w in pairs:
            total += self._trimmed(f, w)
        elected = torch.sign(total)
        # 2. Disjoint mean: each entry averages the trimmed values that agree with the elected sign.
        total, count = torch.zeros_like(elected), torch.zeros_like(elected)
        for f, w in pairs:
            tau = self._trimmed(f, w)
            agree = (torch.sign(tau) == elected) & (tau != 0)
            total += torch.where(agree, tau, 0.0)
            count += agree
        merged = total / count.clamp(min=1)
        return factor_dense(merged, self.rank or _default_rank(factors))

    def _trimmed(self, factor: LowRank, weight: float) -> torch.Tensor:
        """``w ΔW`` with all but its ``⌈density · numel⌉`` largest-magnitude entries set to zero."""
        tau = dense(factor, weight)
        if self.density >= 1.0:
            return tau
        keep = max(1, math.ceil(self.density * tau.numel()))
        mask = torch.zeros(tau.numel(), dtype=torch.bool, device=tau.device)
        mask[torch.topk(tau.abs().flatten(), keep, sorted=False).indices] = True
        return tau * mask.view_as(tau)


@STRATEGIES.register
@dataclass(frozen=True)
class Dare(MergeStrategy):
    """DARE on the weighted full ΔWs, summed, then a truncated SVD to ``rank``.

    Attributes:
        p: the probability of dropping each entry; the kept ones are scaled by ``1/(1−p)``, so the
            expected update is unchanged.
        seed: seeds the drop masks (with the module name: see the module docstring).
        rank: the rank kept; by default the inputs' ranks summed, capped by the matrix size.
    """

    name: ClassVar[str] = "dare"
    usage: ClassVar[str] = "dare:P[,seed=S][,rank=R] with P in [0, 1), e.g. dare:0.5"
    params: ClassVar[tuple[Param, ...]] = (Param("p", float, lambda v: 0.0 <= v < 1.0, "a probability in [0, 1)"),
                                           Param("seed", int, lambda v: isinstance(v, int), "an integer"), _MAX_RANK)
    p: float = 0.5
    seed: int = 0
    rank: int | None = None

    def merge_module(self, name: str, factors: Sequence[LowRank], weights: Sequence[float]) -> Factored:
        gen = torch.Generator().manual_seed(_module_seed(self.seed, name))
        total = torch.zeros(factors[0].shape, dtype=DTYPE, device=factors[0].B.device)
        for factor, weight in zip(factors, weights, strict=True):
            # Masks are drawn on the CPU, so a seed gives the same merge on every device.
            keep = torch.rand(factor.shape, generator=gen, dtype=torch.float64) >= self.p
            total += dense(factor, weight) * keep.to(total.device) / (1.0 - self.p)
        return factor_dense(total, self.rank or _default_rank(factors))


_FACTOR = Param("factor", float, lambda v: math.isfinite(v) and v > 0, "a positive number")


@STRATEGIES.register
@dataclass(frozen=True)
class Clip(MergeStrategy):
    """The summed ΔW with every singular value above ``factor · σ_max(W)`` set to it (W: the module's base
    weight). A long stack of edits to one weight grows a few directions far past the weight's own
    largest singular value and pushes every input along them off (BENCHMARKS.md, "Where ROME's stack
    breaks the model"); this holds them at the bound and keeps every direction under it exactly.

    Attributes:
        factor: the bound as a multiple of the base weight's spectral norm (PRUNE's 1 by default).
        norms: module -> the base weight's spectral norm; given by the caller, never by the spec.
    """

    name: ClassVar[str] = "clip"
    usage: ClassVar[str] = "clip[:FACTOR] with FACTOR > 0 the bound in base-weight spectral norms, e.g. clip:1"
    params: ClassVar[tuple[Param, ...]] = (_FACTOR,)
    needs_norms: ClassVar[bool] = True
    rule: ClassVar[str] = "clip"
    factor: float = 1.0
    norms: Mapping[str, float] | None = dataclasses.field(default=None, compare=False, repr=False)

    def with_norms(self, norms: Mapping[str, float]) -> MergeStrategy:
        return dataclasses.replace(self, norms=dict(norms))

    def merge_module(self, name: str, factors: Sequence[LowRank], weights: Sequence[float]) -> Factored:
        norm = (self.norms or {}).get(name)
        if norm is None or not norm > 0:
            raise InvalidInputError(f"Merge strategy '{self.name}' has no spectral norm of the base weight of {name}.",
                                    hint="Consolidate through the repository, which reads them from the base model.")
        factor, _top, _above, change = restrain_module(factors, weights, self.factor * norm, self.rule)
        return Factored(factor, change)


@STRATEGIES.register
@dataclass(frozen=True)
class Prune(Clip):
    """PRUNE (Ma et al., ICLR 2025): like :class:`Clip`, but each singular value ``σ`` above the bound ``b``
    becomes ``ln σ − ln b + b``, keeping the directions' order."""

    name: ClassVar[str] = "prune"
    usage: ClassVar[str] = "prune[:FACTOR] with FACTOR > 0 the bound in base-weight spectral norms, e.g. prune:1"
    rule: ClassVar[str] = "prune"


def _module_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from the strategy's seed and the module name."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
