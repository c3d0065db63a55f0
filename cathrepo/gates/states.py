"""Content keys of model states: what a measurement or a replayed residual depends on (the base
weights and the deltas applied, or only the parts of them that reach some layers)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.delta import Delta

if TYPE_CHECKING:
    from cathrepo.lm.replay import Lower


def lower_for(model: Any, base_hash: str, change: Delta, deltas: Sequence[Delta],
              directory: Path | None = None) -> Lower | None:
    """:class:`~cathrepo.lm.replay.Lower` for a model carrying ``deltas``: the layers below ``change``'s
    lowest one, keyed by the base, the dtype, the device, the torch and transformers versions and the
    parts of ``deltas`` that reach those layers (so a residual persisted in ``directory`` by another
    process is replayed only where that process computed the same)."""
    import torch
    import transformers

    from cathrepo.lm.replay import Lower, block_of, decoder_layers

    blocks = decoder_layers(model)
    changed = [block_of(blocks, name) for name in change]
    if not changed or None in changed:
        return None
    lowest = min(i for i in changed if i is not None)

    def reaches(name: str) -> bool:  # a module below the change, or outside the decoder layers
        block = block_of(blocks, name)
        return block is None or block < lowest

    param = next(model.parameters())
    model_key = f"{base_hash}:{param.dtype}:{param.device}:{torch.__version__}:{transformers.__version__}"
    return Lower(tuple(blocks[:lowest]), deltas_digest(model_key, deltas, reaches), directory)


def deltas_digest(base_hash: str, deltas: Sequence[Delta], keep: Callable[[str], bool] | None = None) -> str:
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
