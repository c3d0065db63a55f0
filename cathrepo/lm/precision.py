"""Which precision a computation may choose when asked for ``auto``."""

from __future__ import annotations

from typing import Any


def cast_copy(model: Any, dtype: str) -> Any:
    """A copy of ``model`` in its current state (applied deltas included) cast to ``dtype`` ("bfloat16",
    "float32", ...); the model itself is untouched. A model already in ``dtype`` is returned as is."""
    import copy

    import torch

    wanted = getattr(torch, dtype)
    if next(model.parameters()).dtype == wanted:
        return model
    return copy.deepcopy(model).to(wanted)


def bf16_is_fast(device: Any) -> bool:
    """True where bfloat16 matmuls beat float32: CUDA, or a CPU with AVX-512 BF16 or AMX."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
