"""Content keys of model states: what a measurement or a replayed residual depends on (the base
weights and the deltas applied, or only the parts of them that reach some layers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.delta import Delta, deltas_digest

if TYPE_CHECKING:
    from cathrepo.lm.replay import Lower


def lower_for(model: Any, base_hash: str, change: Delta, deltas: Sequence[Delta],
              directory: Path | None = None) -> Lower | None:
    """:class:`~cathrepo.lm.replay.Lower` for a model carrying ``deltas``: the layers below ``change``'s
    lowest one, keyed by the base, the dtype, the device, the torch and transformers versions and the
    parts of ``deltas`` that reach those layers (so a residual persisted in ``directory`` by another
    process is replayed only where that process computed the same)."""
    from cathrepo.lm.replay import Lower, block_of, decoder_layers, model_state_key

    blocks = decoder_layers(model)
    changed = [block_of(blocks, name) for name in change]
    if not changed or None in changed:
        return None
    lowest = min(i for i in changed if i is not None)

    def reaches(name: str) -> bool:  # a module below the change, or outside the decoder layers
        block = block_of(blocks, name)
        return block is None or block < lowest

    return Lower(tuple(blocks[:lowest]), deltas_digest(model_state_key(model, base_hash), deltas, reaches), directory)
