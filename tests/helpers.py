"""Helpers the tests share: bit-exact snapshots of a model's weights.

Many tests promise that a computation leaves the model bit-identical (an edit, a gate run, a revert).
They all take the snapshot and compare it the same way, here, so that "identical" means ``torch.equal``
on every tensor of the state dict everywhere; ``assert not changed_weights(model, snap)`` names the
tensors that moved when it fails.
"""

from __future__ import annotations

from typing import Any


def snapshot(model) -> dict[str, Any]:
    """A detached copy of every tensor in ``model.state_dict()``, by name."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_weights(model, snap: dict[str, Any]) -> list[str]:
    """The names of the state-dict tensors that differ from ``snap`` in any bit (or are missing from it)."""
    import torch

    return [k for k, v in model.state_dict().items() if k not in snap or not torch.equal(v, snap[k])]
