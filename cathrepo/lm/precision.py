"""Which precision a computation may choose when asked for ``auto``."""

from __future__ import annotations

from typing import Any


def bf16_is_fast(device: Any) -> bool:
    """True where bfloat16 matmuls beat float32: CUDA, or a CPU with AVX-512 BF16 or AMX."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
