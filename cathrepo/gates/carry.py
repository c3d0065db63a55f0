"""What the retries of one edit reuse: the gates' ``base`` and ``before`` measurements and decodes,
carried from one :func:`~cathrepo.gates.base.run_gates` run to the next while the ``before`` state,
the stage, the edit's probes and the suite stay the same."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cathrepo.gates.gate import Gate, GateRun


@dataclass
class GateCarry:
    """What the runs gating one edit's attempts on the same ``before`` state share (``run_gates(carry=)``).

    Attributes:
        key: what the kept values depend on (the ``before`` state, stage, probes and suite); a run with
            another key starts afresh.
        measured: gate name -> its ``base``/``before`` measurements (gates with ``carries`` only).
        decodes: the ``base``/``before`` continuations, as in :attr:`GateRun.memo`.
    """

    key: str | None = None
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    decodes: dict[tuple[str, ...], Any] = field(default_factory=dict)


def seed_carry(ctx: GateRun, gates: Sequence[Gate], carry: GateCarry | None) -> None:
    """Reuse a previous run's ``base`` and ``before`` measurements and decodes when ``carry`` holds them
    for the same ``before`` state and edit probes (the retries of one edit); else start ``carry`` afresh."""
    if carry is None:
        return
    key = carry_key(ctx)
    if carry.key != key:
        carry.key, carry.measured, carry.decodes = key, {}, {}
        return
    for gate in gates:
        if gate.carries:
            gate.measured.update(carry.measured.get(gate.name, {}))
    ctx.memo.update(carry.decodes)


def keep_carry(ctx: GateRun, gates: Sequence[Gate], carry: GateCarry) -> None:
    """Store this run's ``base`` and ``before`` measurements and decodes in ``carry`` for the next retry."""
    for gate in gates:
        if not gate.carries:
            continue
        kept = {s: v for s, v in gate.measured.items() if s in ("base", "before")}
        if kept:
            carry.measured[gate.name] = kept
    carry.decodes = {k: v for k, v in ctx.memo.items() if k[0] == "decode" and k[1] in ("base", "before")}


def carry_key(ctx: GateRun) -> str:
    """What carried measurements depend on: the ``before`` state, the stage, the suite and the probes."""
    probes = json.dumps([p.to_dict() for p in ctx.probes.probes] if ctx.probes is not None else None,
                        sort_keys=True, ensure_ascii=False)
    suite = json.dumps([[p.to_dict() for p in ps.probes] for ps in ctx.suite], sort_keys=True, ensure_ascii=False)
    text = f"{ctx.state_digest('before')}\0{ctx.stage}\0{probes}\0{suite}"
    return hashlib.sha256(text.encode()).hexdigest()
