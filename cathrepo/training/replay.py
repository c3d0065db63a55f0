"""Skip the frozen layers below the lowest adapter during training (stage ④, an optimisation).

Below the lowest adapted layer nothing trains and the batch never changes, so every training step would
recompute the same activations. While :func:`replayed` is open, those blocks are swapped for a stand-in
that returns the residual stream recorded once at the input of the first adapted block; the embedding
and the blocks from the adapted one up run as usual. On a 30-layer model adapted at layer 20 a step costs
a third of a full forward. Logits are identical to the full run (kept as a test).

The stand-in forwards attribute lookups (``attention_type`` and the like, which some model loops read)
to the block it replaces, and the original blocks are put back on exit, even on error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _stand_in(original: Any, value: torch.Tensor, as_tuple: bool) -> Any:
    import torch

    class Replay(torch.nn.Module):
        """Returns the recorded residual stream instead of running the block."""

        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "_replaced", original)  # not a submodule: no duplicate parameters

        def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            out = value.to(dtype=hidden_states.dtype)
            return (out,) if as_tuple else out

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(object.__getattribute__(self, "_replaced"), name)

    return Replay()


@contextmanager
def replayed(model: Any, blocks: Sequence[str], residual: torch.Tensor, *, as_tuple: bool = False) -> Iterator[None]:
    """Replace ``blocks`` (the layers below the first adapted one) by the recorded ``residual``.

    Args:
        model: the model.
        blocks: names of the consecutive blocks from layer 0 up to the first adapted layer (excluded).
        residual: (batch, seq, d) the input of the first adapted block for the batch that will be run.
        as_tuple: the blocks return tuples (older transformers) instead of tensors.
    """
    originals = {name: model.get_submodule(name) for name in blocks}
    try:
        for name, block in originals.items():
            model.set_submodule(name, _stand_in(block, residual, as_tuple))
        yield
    finally:
        for name, block in originals.items():
            model.set_submodule(name, block)


def checked_replay(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    blocks: Sequence[str],
    residual: torch.Tensor,
    reference: torch.Tensor,
) -> Any:
    """A context-manager factory for :func:`replayed`, after checking that it reproduces ``reference``.

    Blocks return tensors in transformers 5 and tuples in some older models; both layouts are tried on
    one no-grad run and the one whose logits match the full run's is used. When neither matches (an
    architecture whose loop does something between blocks) training simply runs every layer.

    Args:
        model: the model (no adapter attached yet).
        ids: (batch, seq) the batch the trainer runs.
        mask: its attention mask.
        blocks: the blocks below the first adapted one.
        residual: the recorded input of the first adapted block for this batch.
        reference: the full run's logits of this batch.
    """
    import contextlib
    import logging

    import torch

    if not blocks:
        return contextlib.nullcontext
    for as_tuple in (False, True):
        try:
            with torch.no_grad(), replayed(model, blocks, residual, as_tuple=as_tuple):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
        except Exception:  # noqa: BLE001 - a layout that does not fit the model loop fails in its own way
            continue
        if logits.shape == reference.shape and torch.allclose(logits, reference, atol=1e-4, rtol=1e-4):
            return lambda: replayed(model, blocks, residual, as_tuple=as_tuple)
    logging.getLogger(__name__).info("Layer replay does not reproduce this model's logits; running all layers.")
    return contextlib.nullcontext
