"""The on-disk cache of gate measurements: a state's measurement keyed by the state's digest (base
model and deltas) and the gate's own key, so a later run on the same state reads it instead of
measuring again (the base side of every gate, once per base model and stack)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.files import atomic_write

if TYPE_CHECKING:
    from cathrepo.gates.gate import Gate, GateRun

log = logging.getLogger(__name__)


def _cache_file(ctx: GateRun, gate: Gate, state: str) -> Path | None:
    if not gate.cacheable or state not in gate.cache_states:
        return None
    key = gate.cache_key(ctx)
    if key is None:
        return None
    digest = hashlib.sha256(f"{ctx.state_digest(state)}\0{key}".encode()).hexdigest()[:32]
    return ctx.cache_path(gate.name, f"state-{digest}.json")


def load_cached(ctx: GateRun, gate: Gate, state: str, measured: dict[str, dict[str, Any]]) -> bool:
    """Put ``gate``'s cached ``state`` measurement into ``measured``; False when there is none."""
    path = _cache_file(ctx, gate, state)
    if path is None or not path.is_file():
        return False
    try:
        measured[gate.name][state] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    log.info("%s: using the cached %s measurement %s", gate.name, state, path)
    return True


def store_cached(ctx: GateRun, gate: Gate, state: str, measured: dict[str, dict[str, Any]]) -> None:
    """Write ``gate``'s ``state`` measurement to the cache, when the gate and state are cacheable."""
    path = _cache_file(ctx, gate, state)
    if path is None:
        return
    atomic_write(path, json.dumps(measured[gate.name][state]).encode(), make_parents=True)
