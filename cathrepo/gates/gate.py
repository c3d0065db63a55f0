"""What a gate is and what it runs in: :class:`Gate` and :class:`GateRun` (stage ⑤ of DESIGN.md §2).

A gate measures the model in one or more *states* and then judges the measurements:

- ``base``: the base model, no edits (retention and MMLU baselines; cached on disk by base hash),
- ``before``: the active edits before the change,
- ``after``: the active edits after the change (a new edit: before + [new]; a revert: before minus one).

:mod:`cathrepo.gates.base` holds the registry and :func:`~cathrepo.gates.base.run_gates`, which enters
each state once and hands every gate that needs it the shared :class:`GateRun`; the modules that
serve it (the on-disk cache, the carry between attempts, the decodes) read these types from here.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cathrepo.delta import Delta, deltas_digest
from cathrepo.facts.probes import ProbeSet
from cathrepo.gates.policy import GatePolicy
from cathrepo.gates.results import GateResult
from cathrepo.gates.states import lower_for

if TYPE_CHECKING:
    from cathrepo.lm.replay import Lower

log = logging.getLogger(__name__)

STATES = ("base", "before", "after")


@dataclass
class GateRun:
    """One run of the gates: the model, the change, the edit's probes, the suite of earlier probes, and
    the measurements the gates share (``ctx`` in every gate).

    Attributes:
        base_hash: sha256 of the base weights; keys on-disk caches ("unknown" disables them).
        cache_dir: where cached measurements live (baselines, regression results per state).
        root: directory relative data paths in the policy resolve against (the repository root).
        memo: measurements shared between gates within one run, keyed by (state, name).
    """

    model: Any
    tokenizer: Any
    before: tuple[Delta, ...]
    after: tuple[Delta, ...]
    probes: ProbeSet | None
    suite: tuple[ProbeSet, ...]
    policy: GatePolicy
    stage: str
    base_hash: str = "unknown"
    cache_dir: Path | None = None
    root: Path | None = None
    progress: Callable[[str], None] | None = None
    memo: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def deltas(self, state: str) -> tuple[Delta, ...]:
        return {"base": (), "before": self.before, "after": self.after}[state]

    def once(self, state: str, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (state, key) in this run; gates share scores through it."""
        if (state, key) not in self.memo:
            self.memo[(state, key)] = compute()
        return self.memo[(state, key)]

    def lower(self, state: str, *, persist: bool = False) -> Lower | None:
        """The decoder layers below the lowest one the newest delta changes, and what they read in
        ``state``: scoring replays them for rows another state with the same reading scored (every
        state of one edit reads the same there). With ``persist`` the recorded residuals also go to the
        cache directory, for rows every edit scores (retention's known facts). None when "after" is
        not "before" plus one delta, the delta touches a module outside the decoder layers, or the base
        is unknown (nothing to key on)."""
        if self.base_hash == "unknown" or len(self.after) != len(self.before) + 1:
            return None
        key = ("lower", state, str(persist))
        if key not in self.memo:
            directory = self.cache_path("residuals") if persist else None
            self.memo[key] = lower_for(self.model, self.base_hash, self.after[-1], self.deltas(state), directory)
        return self.memo[key]

    def state_digest(self, state: str) -> str:
        """A content hash of the model in ``state``: the base hash plus every applied delta's bytes."""
        return deltas_digest(self.base_hash, self.deltas(state))

    def cache_path(self, *parts: str) -> Path | None:
        if self.cache_dir is None or self.base_hash == "unknown":
            return None
        return self.cache_dir.joinpath(*parts)

    def decoded(self, state: str, prompt: str, tokens: int) -> str:
        """The greedy continuation of ``prompt`` in ``state``, cut to ``tokens`` tokens; it must have been
        asked for through :meth:`Gate.decodes` (run_gates decodes every gate's prompts in one pass)."""
        if not self.has_decoded(state, prompt, tokens):
            raise ValueError(f"{prompt!r} was not decoded for {tokens} tokens in state {state}")
        _, ids = self.memo[("decode", state, prompt)]
        return self.tokenizer.decode(ids[:tokens], skip_special_tokens=True).strip()

    def has_decoded(self, state: str, prompt: str, tokens: int) -> bool:
        """Whether ``prompt``'s continuation in ``state`` was decoded for at least ``tokens`` tokens."""
        budget, _ = self.memo.get(("decode", state, prompt), (0, None))
        return budget >= tokens

    def say(self, message: str) -> None:
        log.info(message)
        if self.progress is not None:
            self.progress(message)


class Gate(ABC):
    """Base class of the gates. Subclasses set ``name`` and ``states`` and register with ``@GATES.register``.

    ``measure`` runs with the model in one state and returns anything; ``judge`` turns the measurements
    (a dict state -> value) into a :class:`GateResult`. ``cacheable`` measurements (JSON values) of the
    ``base`` state are kept on disk keyed by :meth:`cache_key`.
    """

    name: ClassVar[str]
    states: ClassVar[tuple[str, ...]] = ("before", "after")
    #: cost tier: 0 teacher-forced scores of the edit's own probes (about a second), 1 short free-generation
    #: decodes, 2 long ones (each decoded token is a forward pass), 3 whole-suite or whole-corpus scores;
    #: gates run tier by tier
    cost: ClassVar[int] = 0
    #: whether the ``base``/``before`` measurements depend only on those states, the edit's probes and the
    #: suite (not on the new delta), so a retry of the same edit may reuse them (``run_gates(carry=...)``)
    carries: ClassVar[bool] = False
    #: whether :meth:`measure` runs the model (False: it reads only what run_gates decoded, so it can be
    #: judged the moment the decode is done, without applying any state)
    reads_model: ClassVar[bool] = True
    cacheable: ClassVar[bool] = False
    #: states whose measurement is cached on disk (by the state's content hash) when ``cacheable``
    cache_states: ClassVar[tuple[str, ...]] = ("base",)

    def __init__(self, policy: GatePolicy) -> None:
        self.policy = policy
        #: measurements of the states already measured in this run (base comes first, after last)
        self.measured: dict[str, Any] = {}

    def skip_reason(self, ctx: GateRun) -> str | None:
        """Why this gate has nothing to measure in ``ctx`` (it then passes as skipped), or None."""
        return None

    def cache_key(self, ctx: GateRun) -> str | None:
        """What a cached ``base`` measurement depends on besides the base weights (None: no cache)."""
        return None

    def decodes(self, ctx: GateRun) -> list[tuple[str, str, int]]:
        """(state, prompt, tokens) greedy continuations the gate reads with :meth:`GateRun.decoded`.

        :func:`run_gates` decodes every gate's requests together at the first tier that reads any, with "before" and
        "after" rows in the same batches where the change is one added delta.
        """
        return []

    @abstractmethod
    def measure(self, ctx: GateRun, state: str) -> Any:
        """Measure with the model in ``state`` (the deltas are already applied)."""

    @abstractmethod
    def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
        """The verdict from the measurements of every state in ``states``."""

    def result(self, passed: bool, metrics: dict[str, float], thresholds: dict[str, float],
               detail: str = "", flips: Sequence[float] = ()) -> GateResult:
        return GateResult(self.name, bool(passed), metrics, thresholds, detail, flips=tuple(flips))
