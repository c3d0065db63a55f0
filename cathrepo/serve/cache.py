"""Materialized models for the server: the base model plus a selection's deltas, kept in a bounded cache.

Each cached model is its own copy of the base with the deltas added once, when it is built; nothing
changes its weights afterwards. The base model itself is never changed (a selection with no edits is
served by it directly). Every model has one lock: it is built under it and generation holds it, so
requests to one model run one at a time and requests to different models never see each other's edits.
The cache holds at most ``capacity`` models besides the base, dropping the least recently used; a
request still running on a dropped model keeps it alive until it ends.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import CathrepoError

if TYPE_CHECKING:
    from cathrepo.delta import Delta

log = logging.getLogger(__name__)


class ServeTimeoutError(CathrepoError):
    """A request ran past its deadline (the server answers 504)."""


@dataclass
class CachedModel:
    """One materialized model and the lock that guards it."""

    key: Hashable
    model: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    built_s: float = 0.0


class ModelCache:
    """Materialized models by key, at most ``capacity`` besides the base (LRU)."""

    def __init__(self, base: Any, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.base = base
        self.capacity = capacity
        self._base_entry = CachedModel(key=("base",), model=base)
        self._entries: OrderedDict[Hashable, CachedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)

    @contextmanager
    def holding(self, key: Hashable, deltas: Sequence[Delta], deadline: float) -> Iterator[Any]:
        """The model for ``key`` (built from ``deltas`` when missing), its lock held while the block runs.

        Raises:
            ServeTimeoutError: the lock was not free (or the model not built) before ``deadline``
                (a ``time.monotonic()`` value).
        """
        entry = self._base_entry if not deltas else self._entry(key)
        if not entry.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise ServeTimeoutError("The request timed out waiting for its model (other requests hold it).",
                                    hint="Retry later, or raise the server's --timeout.")
        try:
            if entry.model is None:
                entry.model = self._build(deltas)
                entry.built_s = time.monotonic()
            yield entry.model
        finally:
            entry.lock.release()

    def _entry(self, key: Hashable) -> CachedModel:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = CachedModel(key)
                while len(self._entries) > self.capacity:
                    dropped, _ = self._entries.popitem(last=False)
                    log.info("model cache: dropped %s", _short(dropped))
            self._entries.move_to_end(key)
            return entry

    def _build(self, deltas: Sequence[Delta]) -> Any:
        """A copy of the base with ``deltas`` added (checked first: a bad delta leaves nothing half-built)."""
        from cathrepo.delta import apply_deltas

        started = time.perf_counter()
        model = copy.deepcopy(self.base)
        apply_deltas(model, deltas)  # the undo record is dropped: this copy is never restored, only freed
        self.builds += 1
        log.info("model cache: built a model with %d delta(s) in %.2f s", len(deltas), time.perf_counter() - started)
        return model


def _short(key: Hashable) -> str:
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str):
        return f"{key[0][:12]} ({len(key[1])} edits)"
    return str(key)
