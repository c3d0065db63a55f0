"""Resumable sequential runs (``cathrepo bench edits --sequential --state DIR``).

A run of 1,000 sequential MEMIT facts takes longer on this machine than a working session lasts. At
every checkpoint the run saves its stack here: each edit's delta in PEFT's layout (``deltas/0000/`` …),
its seconds and sizes, and the checkpoints measured so far, then ``state.json`` last (written to a
temporary name and renamed, so a cut never leaves a half-written state). Started again with the same
``--state`` and the same setup (the key hashes everything that decides the edits: data, records,
method, parameters, batch size, model, corpus), the run loads the saved deltas, applies them in the
same order (the same weights: applying is deterministic) and goes on after the last saved edit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cathrepo.exceptions import InvalidInputError

STATE = "state.json"
DELTAS = "deltas"


def setup_key(config: Any) -> str:
    """The sha256 of what decides a sequential run's edits (not how they are measured)."""
    fields = {"data": str(config.data), "n": config.n, "skip": config.skip, "method": config.method,
              "edit_batch": config.edit_batch, "params": dict(config.params), "model": config.model,
              "corpus": str(config.corpus) if config.corpus else None}
    if getattr(config, "restrain", None):  # only when set: the states saved before it keep their key
        fields.update(restrain=config.restrain, restrain_factor=config.restrain_factor)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class RunState:
    """What a sequential run has done: ``done`` facts edited by ``deltas`` (one per batch), their
    seconds and sizes per fact, and the checkpoints measured."""

    key: str
    done: int = 0
    deltas: list[Any] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    sizes: list[float] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path | None, key: str) -> RunState:
        """The saved state in ``directory`` (empty when there is none); a state of another setup is refused."""
        from cathrepo.delta import load_delta

        if directory is None or not (directory / STATE).is_file():
            return cls(key)
        path = directory / STATE
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != key:
            raise InvalidInputError(f"'{directory}' holds the state of another run (a different setup).",
                                    hint="Pass a new --state directory, or the same options as that run.")
        deltas = [load_delta(directory / DELTAS / f"{i:04d}") for i in range(int(data["edits"]))]
        return cls(key, int(data["done"]), deltas, list(data["seconds"]), list(data["sizes"]),
                   list(data["checkpoints"]))

    def save(self, directory: Path | None) -> None:
        """Write the deltas not yet on disk, then ``state.json`` atomically."""
        from cathrepo.delta import save_delta

        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        for i, delta in enumerate(self.deltas):
            target = directory / DELTAS / f"{i:04d}"
            if not (target / "adapter_config.json").is_file():
                save_delta(delta, target)
        data: Mapping[str, Any] = {"key": self.key, "done": self.done, "edits": len(self.deltas),
                                   "seconds": self.seconds, "sizes": self.sizes, "checkpoints": self.checkpoints}
        tmp = directory / f".{STATE}.tmp"
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, directory / STATE)
