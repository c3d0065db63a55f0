"""Requests to one model decoded together: a queue per model, drained under the model's lock.

On a CPU (and on most accelerators) decoding a small model is bound by reading its weights once per
step, not by the number of rows, so requests that wait for the same model are decoded as one batch
instead of one after another. Each request joins its model's queue and schedules a drain in the
generation pool; a drain takes the model's lock (:class:`~cathrepo.serve.cache.ModelCache`), takes
every request queued by then (up to ``max_batch``), decodes them in groups of one sampling mode, and
hands each its answer. A drain that finds the queue empty (an earlier one took its request) returns at
once. Requests for different models are in different queues and never share a batch or a model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.serve.cache import ModelCache, ServeTimeoutError
from cathrepo.serve.inference import Output, Params, complete_batch

if TYPE_CHECKING:
    from cathrepo.delta import Delta

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One queued request: its prompt ids, parameters, deadline and the future its answer goes to."""

    ids: list[int]
    params: Params
    deadline: float
    future: Future[Output] = field(default_factory=Future)

    @property
    def mode(self) -> tuple[float, float]:
        """Rows decode together only in one sampling mode (greedy: temperature 0, any top_p)."""
        return (0.0, 1.0) if self.params.temperature == 0 else (self.params.temperature, self.params.top_p)


class Batcher:
    """The queues of every model, drained in ``pool``."""

    def __init__(self, cache: ModelCache, tokenizer: Any, pool: ThreadPoolExecutor, max_batch: int) -> None:
        self.cache = cache
        self.tokenizer = tokenizer
        self.pool = pool
        self.max_batch = max_batch
        self._queues: dict[Hashable, list[Pending]] = {}
        self._lock = threading.Lock()
        self.batch_sizes: Counter[int] = Counter()  # batch size -> batches decoded (tests, the benchmark)

    def queued(self) -> int:
        """Requests waiting for a drain, over every model."""
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def submit(self, key: Hashable, deltas: Sequence[Delta], ids: list[int], params: Params,
               deadline: float) -> Future[Output]:
        """Queue a request for the model ``key`` (built from ``deltas`` when missing); its answer, or a
        :class:`ServeTimeoutError`, arrives in the returned future."""
        pending = Pending(ids, params, deadline)
        with self._lock:
            self._queues.setdefault(key, []).append(pending)
        self.pool.submit(self._drain, key, deltas)
        return pending.future

    def _take(self, key: Hashable, limit: int | None) -> list[Pending]:
        with self._lock:
            queue = self._queues.get(key, [])
            taken, rest = (queue[:limit], queue[limit:]) if limit is not None else (queue, [])
            if rest:
                self._queues[key] = rest
            else:
                self._queues.pop(key, None)
            return taken

    def _drain(self, key: Hashable, deltas: Sequence[Delta]) -> None:
        with self._lock:
            queue = self._queues.get(key)
            if not queue:
                return
            latest = max(p.deadline for p in queue)
        batch: list[Pending] = []
        try:
            with self.cache.holding(key, deltas, latest) as model:
                batch = self._take(key, self.max_batch)
                self._decode(model, batch)
        except ServeTimeoutError as exc:  # the lock stayed busy past every deadline queued when it began
            if batch:
                _fail(batch, exc)
                return
            now = time.monotonic()
            queued = self._take(key, None)
            _fail([p for p in queued if p.deadline <= now], exc)
            alive = [p for p in queued if p.deadline > now]  # queued while this drain waited
            if alive:
                with self._lock:
                    self._queues.setdefault(key, [])[:0] = alive
                self.pool.submit(self._drain, key, deltas)
        except Exception as exc:  # every request taken (or queued, when building the model failed) gets the error
            log.exception("decoding a batch failed")
            _fail(batch or self._take(key, None), exc)

    def _decode(self, model: Any, batch: list[Pending]) -> None:
        now = time.monotonic()
        late = [p for p in batch if p.deadline <= now]
        _fail(late, ServeTimeoutError("The request timed out waiting for its model (other requests held it).",
                                      hint="Retry later, or raise the server's --timeout."))
        groups: dict[tuple[float, float], list[Pending]] = {}
        for pending in batch:
            if pending.deadline > now:
                groups.setdefault(pending.mode, []).append(pending)
        for group in groups.values():
            self.batch_sizes[len(group)] += 1
            outputs = complete_batch(model, self.tokenizer, [(p.ids, p.params) for p in group],
                                     deadline=max(p.deadline for p in group))
            for pending, output in zip(group, outputs, strict=True):
                if output is None:
                    _fail([pending], ServeTimeoutError("Generation ran past the server's time limit.",
                                                       hint="Ask for fewer tokens, or raise --timeout."))
                else:
                    pending.future.set_result(output)


def _fail(batch: Sequence[Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
