"""Replaying the layers below a change: a state scored again reads the lower layers' output from memory.

An edit changes a few modules at or above some decoder layer L. Every layer below L reads the same
weights before and after, so for the same rows it computes the same residual stream; scoring the
"after" state of rows the "before" state has scored (the gates do it for every probe, and for the known
facts of retention in every edit) can start at layer L. :class:`Lower` names those layers and what they
read; :func:`lower_layers` wraps one forward pass: the first time a batch is seen its residual at the
input of layer L is recorded, every later time the layers below return it without running. At layer 6
of 30 that is a fifth of each forward. The logits are bit-identical: the replayed tensor is the one the
same layers computed from the same rows and weights.

Recorded residuals live in a process-wide store bounded by :data:`STORE_BYTES` (least recently used
first out): an edit's "after" probes replay its "before" pass, a retry at the same layer replays the
first attempt's. Every command runs in a process of its own (a resident worker forks one per command),
so what is shared from one edit to the next (retention's known facts, the same rows after every edit)
also goes to ``Lower.directory`` when the caller gives one: one file per batch, written atomically,
the directory bounded by :data:`DISK_BYTES` (the files least recently written or read go first: every
new edit is a new lower state for the layers above it, so without a bound it would grow with the
repository's history).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cathrepo.lm.hooks import replayed
from cathrepo.models import model_device

#: Bytes of recorded residual streams kept per process.
STORE_BYTES = 256 * 2**20

#: Bytes of persisted residual streams kept in a ``Lower.directory``.
DISK_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Lower:
    """The decoder layers below a change and a digest of everything they read.

    Attributes:
        blocks: the names of decoder layers 0 .. L-1, in order (empty: nothing to replay).
        reads: a digest of the model and weights those layers compute with; two states with equal
            ``reads`` compute the same residual stream at layer L for the same rows.
        directory: where recorded residuals also persist for other processes (None: memory only).
    """

    blocks: tuple[str, ...]
    reads: str
    directory: Path | None = None


class ResidualStore:
    """Recorded residual streams by (what the lower layers read, the batch), least recently used out."""

    def __init__(self, max_bytes: int = STORE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, str]) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: Any) -> None:
        size = _nbytes(value)
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= _nbytes(old)

    def __len__(self) -> int:
        return len(self._items)


#: The process's store (one command's: a resident worker forks a process per command).
STORE = ResidualStore()


def batch_key(*tensors: Any) -> str:
    """A digest of one forward pass's inputs (token ids, positions, attention mask)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@contextmanager
def lower_layers(model: Any, lower: Lower | None, *inputs: Any) -> Iterator[None]:
    """Around one forward pass of ``inputs``: replay the layers in ``lower`` when this batch was recorded
    with the same ``lower.reads``, else run them and record their output."""
    if lower is None or not lower.blocks:
        yield
        return
    store = STORE
    key = (f"{lower.reads}:{lower.blocks[-1]}", batch_key(*inputs))  # the residual at this layer only
    recorded = store.get(key)
    if recorded is None and lower.directory is not None:
        recorded = _load(lower.directory, key, model_device(model))
        if recorded is not None:
            store.put(key, recorded)
    if recorded is not None:
        with replayed(model, lower.blocks, dict.fromkeys(lower.blocks, recorded)):
            yield
        return
    seen: dict[str, Any] = {}
    with replayed(model, lower.blocks[-1:], seen):
        yield
    if lower.blocks[-1] in seen:
        store.put(key, seen[lower.blocks[-1]])
        if lower.directory is not None:
            _save(lower.directory, key, seen[lower.blocks[-1]])


def _file(directory: Path, key: tuple[str, str]) -> Path:
    return directory / (hashlib.sha256("\0".join(key).encode()).hexdigest()[:40] + ".pt")


def _load(directory: Path, key: tuple[str, str], device: Any) -> Any:
    """A residual persisted under ``key``, on ``device``, or None (missing or unreadable: it is
    recorded again)."""
    import torch

    path = _file(directory, key)
    if not path.is_file():
        return None
    try:
        value = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # noqa: BLE001 - a truncated or foreign file is a miss, never an error
        return None
    try:
        os.utime(path)  # recently read: the last to be pruned
    except OSError:
        pass
    return value


def _save(directory: Path, key: tuple[str, str], value: Any) -> None:
    """Persist ``value`` under ``key``: a temporary file renamed into place, so a reader never sees half."""
    import torch

    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    except OSError:  # a read-only cache: replay stays in memory
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(_on_cpu(value), fh)
        os.replace(tmp, _file(directory, key))
    except OSError:  # a full disk: replay stays in memory
        Path(tmp).unlink(missing_ok=True)
        return
    _prune(directory, DISK_BYTES)


def _prune(directory: Path, max_bytes: int) -> None:
    """Delete the persisted residuals least recently written or read until ``directory`` holds at most
    ``max_bytes`` of them (a file another process deletes first is skipped)."""
    files = []
    for path in directory.glob("*.pt"):
        try:
            stat = path.stat()
        except OSError:
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size


def _on_cpu(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_on_cpu(v) for v in value)
    return value.cpu() if hasattr(value, "cpu") else value


def decoder_layers(model: Any) -> list[str]:
    """The names of the model's decoder layers, bottom to top."""
    from cathrepo.models import family_for, num_layers

    family = family_for(model)
    return [family.layer_name("layer", i) for i in range(num_layers(model))]


def model_state_key(model: Any, base_hash: str) -> str:
    """What a value read off ``model`` depends on besides the deltas applied to it: the base weights'
    hash, the dtype, the device and the torch and transformers versions (persisted residuals and cached
    keys are reused only where another process computed the same)."""
    import torch
    import transformers

    param = next(model.parameters())
    return f"{base_hash}:{param.dtype}:{param.device}:{torch.__version__}:{transformers.__version__}"


def block_of(blocks: Sequence[str], module: str) -> int | None:
    """The index of the decoder layer in ``blocks`` that holds ``module``, or None."""
    for i, name in enumerate(blocks):
        if module == name or module.startswith(name + "."):
            return i
    return None


def layers_below(model: Any, module: str) -> list[str]:
    """The decoder layers under the one that holds ``module`` (nothing a change there can reach them);
    none for a module outside the decoder layers."""
    blocks = decoder_layers(model)
    i = block_of(blocks, module)
    return blocks[:i] if i is not None else []


def _nbytes(value: Any) -> int:
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return int(value.numel() * value.element_size()) if hasattr(value, "numel") else 0
