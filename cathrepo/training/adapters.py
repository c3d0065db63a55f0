"""PEFT LoRA adapters attached for training only, then read back as a Delta (stage ④).

The trainer needs gradients through a LoRA on a few named projections of the caller's model, and the
caller's model must come back bit-identical (STYLE.md §6). Copying a 135M model per edit costs half a
gigabyte, so the adapter is injected into the model itself with PEFT's ``LoraModel`` and removed with
``unload()`` on exit, even on error: the wrapped base layers are the original modules, so their weights
are never copied or touched, and the original ``requires_grad`` flags and train/eval mode are restored.

PEFT computes ``W x + scale · B (A x)`` with ``scale = alpha / r``; the Delta holds ``B``, ``A`` and that
scale in the (out, in) orientation, which is what :func:`~cathrepo.delta.apply_delta` adds
(transposed for GPT-2's Conv1D). Saved in PEFT's layout, the Delta reloads as the same adapter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.delta import Delta, LowRank

if TYPE_CHECKING:
    import torch

ADAPTER = "cathrepo"


@dataclass
class Lora:
    """A live LoRA on named modules of a model."""

    model: Any
    modules: list[str]

    def parameters(self) -> list[torch.nn.Parameter]:
        params = []
        for name in self.modules:
            layer = self.model.get_submodule(name)
            params += [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
        return params

    def delta(self, base_model: str = "") -> Delta:
        """The adapter as a Delta: per module ``(B: out×r, A: r×in, scale = alpha / r)``, detached copies."""
        factors = {}
        for name in self.modules:
            layer = self.model.get_submodule(name)
            A = layer.lora_A[ADAPTER].weight.detach().float().cpu().clone()  # (r, in)
            B = layer.lora_B[ADAPTER].weight.detach().float().cpu().clone()  # (out, r)
            factors[name] = LowRank(B, A, float(layer.scaling[ADAPTER]))
        return Delta(factors, base_model)


@contextmanager
def lora_attached(
    model: Any,
    modules: Sequence[str],
    *,
    rank: int,
    alpha: float,
    seed: int = 0,
    init_scale: float = 0.0,
) -> Iterator[Lora]:
    """Attach a LoRA to ``modules`` of ``model`` for the duration of the context.

    Args:
        model: the base model; its weights are never modified.
        modules: full module names ("model.layers.5.mlp.down_proj").
        rank: LoRA rank r.
        alpha: LoRA alpha (scale alpha / r).
        seed: seeds the initialization of A (Kaiming uniform, PEFT's default), so training is
            deterministic.
        init_scale: standard deviation of a random B at start (0 = PEFT's zero init: no change at step 0;
            tests use a non-zero value to check the extraction).
    """
    import torch
    from peft import LoraConfig, LoraModel

    from cathrepo.models import family_for, get_module, is_conv1d

    names = list(dict.fromkeys(modules))
    for name in names:
        get_module(model, name)
    conv1d = family_for(model).conv1d and any(is_conv1d(get_module(model, n)) for n in names)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=names, bias="none",
                        fan_in_fan_out=conv1d, init_lora_weights=True)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    training = model.training
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapper = LoraModel(model, config, ADAPTER)
        lora = Lora(model, names)
        if init_scale:
            with torch.no_grad():
                for p in lora.parameters()[1::2]:
                    p.normal_(0.0, init_scale)
    device = next(model.parameters()).device
    for p in lora.parameters():
        p.data = p.data.to(device=device, dtype=torch.float32)
        p.requires_grad_(True)
    try:
        yield lora
    finally:
        wrapper.unload()
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, False))
        model.train(training)
