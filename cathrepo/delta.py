"""Delta: the one object every edit method produces (DESIGN.md §1).

A Delta maps module names to low-rank factors ``(B: out×r, A: r×in, scale)`` with
``ΔW = scale · B @ A`` in the (out, in) orientation of ``nn.Linear``; GPT-2's Conv1D stores the
transpose and is handled here, once. Deltas are stored in PEFT's LoRA layout so that
``peft.PeftModel.from_pretrained(base, edit_dir)`` reproduces the edited model.

Applying checks shapes and finiteness and keeps the original tensors, so removing restores the weights
bit for bit (kept as a test). Edit methods never call :func:`apply_delta` on the caller's model
permanently: they compute a Delta and leave the model unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import DeltaError

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LowRank:
    """``ΔW = scale · B @ A`` for one module; B is (out, r), A is (r, in)."""

    B: torch.Tensor
    A: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.B.dim() != 2 or self.A.dim() != 2 or self.B.shape[1] != self.A.shape[0]:
            raise DeltaError(
                f"Low-rank factors do not chain: B {tuple(self.B.shape)}, A {tuple(self.A.shape)}."
            )

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.B.shape[0]), int(self.A.shape[1]))

    def full(self) -> torch.Tensor:
        """The dense (out, in) update in float32."""
        return (self.B.float() @ self.A.float()) * self.scale

    def folded(self) -> LowRank:
        """The same update with ``scale`` folded into B (PEFT files store scale 1)."""
        if self.scale == 1.0:
            return self
        return LowRank(self.B * self.scale, self.A, 1.0)

    def scaled(self, factor: float) -> LowRank:
        return LowRank(self.B, self.A, self.scale * factor)


@dataclass(frozen=True)
class Delta:
    """A set of low-rank updates keyed by module name ("model.layers.5.mlp.down_proj")."""

    factors: Mapping[str, LowRank]
    base_model: str = ""

    def __post_init__(self) -> None:
        if not self.factors:
            raise DeltaError("A delta must change at least one module.")

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.factors))

    @property
    def modules(self) -> list[str]:
        return sorted(self.factors)

    def scaled(self, factor: float) -> Delta:
        """The delta times ``factor`` (``-1`` is adapter negation)."""
        return Delta({k: v.scaled(factor) for k, v in self.factors.items()}, self.base_model)

    def num_bytes(self) -> int:
        return sum((f.A.numel() + f.B.numel()) * 4 for f in self.factors.values())

# --- apply / remove -------------------------------------------------------------------------------


@dataclass
class AppliedDelta:
    """Undo record of :func:`apply_delta`: the original tensors of every module it touched."""

    originals: dict[str, torch.Tensor] = field(default_factory=dict)

    def remove(self, model: Any) -> None:
        """Restore the original weights bit for bit."""
        from cathrepo.models import get_module

        for name, original in self.originals.items():
            get_module(model, name).weight.data.copy_(original)
        self.originals.clear()


def _check(model: Any, name: str, factor: LowRank) -> Any:
    import torch

    from cathrepo.models import get_module, weight_shape

    try:
        module = get_module(model, name)
    except Exception as exc:
        raise DeltaError(f"The delta names module '{name}', which this model does not have.") from exc
    if not hasattr(module, "weight"):
        raise DeltaError(f"Module '{name}' has no weight to update.")
    if weight_shape(module) != factor.shape:
        raise DeltaError(
            f"Delta for '{name}' is {factor.shape[0]}×{factor.shape[1]} but the weight is "
            f"{weight_shape(module)[0]}×{weight_shape(module)[1]}.",
            hint="Was it computed for another base model?",
        )
    if not (torch.isfinite(factor.A).all() and torch.isfinite(factor.B).all()):
        raise DeltaError(f"Delta for '{name}' holds NaN or infinite values; refusing to apply it.")
    return module


def apply_delta(model: Any, delta: Delta) -> AppliedDelta:
    """Add ``delta`` to the model's weights in place; returns the record that undoes it.

    Every module is checked before any weight changes, so a bad delta leaves the model untouched.
    """
    return apply_deltas(model, [delta])


def apply_deltas(model: Any, deltas: Iterable[Delta]) -> AppliedDelta:
    """Apply several deltas, with one undo record for all of them.

    Every factor is checked before any weight changes. A module that one delta touches gets exactly
    what :func:`apply_delta` would give it; a module that several touch gets the sum of their updates
    as one product of the stacked factors (``[s₁B₁ … sₙBₙ] @ [A₁; …; Aₙ]``), added once: a stack of
    a thousand rank-one edits costs one matmul per module instead of a thousand dense adds and copies.
    (The sum is rounded once instead of n times, so it may differ from adding the deltas one by one in
    the last bits; the same stack always gives the same weights.)
    """
    import torch

    from cathrepo.models import is_conv1d

    per_module: dict[str, list[LowRank]] = {}
    modules: dict[str, Any] = {}
    for delta in deltas:
        for name, factor in delta.factors.items():
            modules[name] = _check(model, name, factor)
            per_module.setdefault(name, []).append(factor)
    record = AppliedDelta()
    with torch.no_grad():
        for name, factors in per_module.items():
            weight = modules[name].weight
            record.originals[name] = weight.detach().clone()
            if len(factors) == 1:
                update = factors[0].full()
            else:
                b = torch.cat([f.B.float() * f.scale for f in factors], dim=1)
                a = torch.cat([f.A.float() for f in factors], dim=0)
                update = b @ a
            update = update.to(device=weight.device)
            if is_conv1d(modules[name]):
                update = update.T
            weight.data.copy_((weight.data.float() + update).to(weight.dtype))
    return record


@contextmanager
def applied(model: Any, *deltas: Delta) -> Iterator[Any]:
    """Context manager: the model with ``deltas`` applied, restored bit for bit on exit."""
    record = apply_deltas(model, deltas)
    try:
        yield model
    finally:
        record.remove(model)


@contextmanager
def applied_to_rows(model: Any, delta: Delta, rows: torch.Tensor) -> Iterator[Any]:
    """Context manager: forward passes see ``delta`` only in the batch rows flagged by ``rows`` (bool,
    (batch,)), as ``output += rows · scale · (x Aᵀ) Bᵀ`` at each module; the weights are not touched.

    Two model states then share one batch: decoding, bound by reading the weights, costs one pass
    instead of two. The rows must keep their order for as long as the context is open.
    """
    import torch

    from cathrepo.lm.hooks import add_to_output

    for name, factor in delta.factors.items():
        _check(model, name, factor)

    def make(factor: LowRank) -> Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]:
        def extra(x: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:  # x (batch, seq, in), out (batch, seq, out)
            if x is None:
                raise DeltaError("A delta applied to some rows needs the module's input, and this module was "
                                 "called with keyword arguments only.", hint="Apply the delta to the weights.")
            a = factor.A.to(device=x.device, dtype=torch.float32)
            b = (factor.B * factor.scale).to(device=x.device, dtype=torch.float32)
            gate = rows.to(device=x.device, dtype=torch.float32).view(-1, *([1] * (x.dim() - 1)))
            return out + ((x.float() @ a.T) @ b.T * gate).to(out.dtype)

        return extra

    with add_to_output(model, {name: make(f) for name, f in delta.factors.items()}):
        yield model


# --- PEFT layout I/O ------------------------------------------------------------------------------


def peft_config(delta: Delta, *, fan_in_fan_out: bool = False) -> dict[str, Any]:
    """The ``adapter_config.json`` of a delta: per-module ranks through rank/alpha patterns.

    Alpha equals rank for every module, so PEFT's scale ``alpha / r`` is 1 and the stored B carries
    the delta's own scale.
    """
    ranks = {name: f.rank for name, f in delta.factors.items()}
    r0 = max(ranks.values())
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": delta.base_model or None,
        "r": r0,
        "lora_alpha": r0,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "target_modules": sorted(ranks),
        "rank_pattern": {k: v for k, v in sorted(ranks.items()) if v != r0},
        "alpha_pattern": {k: v for k, v in sorted(ranks.items()) if v != r0},
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "revision": None,
    }


def save_delta(delta: Delta, directory: Path, *, fan_in_fan_out: bool = False) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (float32, scale folded)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in delta:
        factor = delta.factors[name].folded()
        tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = factor.A.detach().float().contiguous().cpu()
        tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = factor.B.detach().float().contiguous().cpu()
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "producer": "cathrepo"})
    config = peft_config(delta, fan_in_fan_out=fan_in_fan_out)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_delta(directory: Path, *, weights: Path | None = None) -> Delta:
    """Read a PEFT LoRA directory (any alpha/rank patterns) back into a Delta.

    Args:
        directory: holds ``adapter_config.json`` (and normally the weights).
        weights: the safetensors file when it lives elsewhere (a DVC cache object).
    """
    config_path = directory / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError as exc:
        raise DeltaError(f"Missing adapter file '{exc.filename}'.") from exc
    except (json.JSONDecodeError, OSError) as exc:
        raise DeltaError(f"Cannot read '{config_path}': {exc}") from exc
    return delta_from_parts(config, weights or directory / WEIGHTS_NAME, what=str(directory))


def delta_from_parts(config: Mapping[str, Any], weights: Path | bytes, *, what: str = "the adapter") -> Delta:
    """Build a Delta from a parsed ``adapter_config.json`` and a safetensors file (a path, or its bytes
    when the caller has already read and hashed them)."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    try:
        tensors = load(weights) if isinstance(weights, bytes) else load_file(str(weights))
    except FileNotFoundError as exc:
        raise DeltaError(f"Missing adapter weights '{weights!s}' of {what}.") from exc
    except (SafetensorError, OSError) as exc:
        raise DeltaError(f"Cannot read the weights of {what}: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise DeltaError(f"{what} is not a LoRA adapter (peft_type={config.get('peft_type')!r}).")
    factors: dict[str, LowRank] = {}
    names = {k[len(_PEFT_PREFIX) : -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")}
    for name in sorted(names):
        A = tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"]
        B = tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"]
        r = _pattern(config.get("rank_pattern") or {}, name, config["r"])
        alpha = _pattern(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        scale = alpha / (r**0.5 if config.get("use_rslora") else r)
        factors[name] = LowRank(B, A, float(scale))
    if not factors:
        raise DeltaError(f"{what} holds no LoRA factors.")
    return Delta(factors, config.get("base_model_name_or_path") or "")


def _pattern(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    import re

    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def deltas_digest(base_hash: str, deltas: Iterable[Delta], keep: Callable[[str], bool] | None = None) -> str:
    """sha256 over the base hash and, in order, each delta's module names, scales and factor bytes
    (only the modules ``keep`` accepts, when given; a delta left with none counts as absent)."""
    h = hashlib.sha256(base_hash.encode())
    for delta in deltas:
        names = [name for name in delta if keep is None or keep(name)]
        if not names:
            continue
        h.update(b"\x01")
        for name in names:
            f = delta.factors[name]
            h.update(name.encode() + b"\0" + repr(float(f.scale)).encode())
            for t in (f.B, f.A):
                h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()
