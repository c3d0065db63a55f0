"""Edit methods: the base class and the registry (stage ④ of DESIGN.md §2).

An edit method turns facts into a :class:`~cathrepo.delta.Delta` and never mutates the model it
is given (STYLE.md §6; a test per method checks the weights are bit-identical afterwards). Each method
has one ``<Method>Params`` dataclass with per-family defaults, recorded in the edit record.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cathrepo.delta import Delta
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.registry import Registry

if TYPE_CHECKING:
    from cathrepo.facts.probes import ProbeSet
    from cathrepo.gates.results import GateReport
    from cathrepo.provenance.manifest import EditRecord


@dataclass(frozen=True)
class EditEnv:
    """The environment an edit method runs in, besides the model, tokenizer and facts. (In cathrepo,
    "context" means only text put before a prompt: the teacher's context, ROME's context prefixes.)

    Attributes:
        base_hash: sha256 of the base weights; keys the statistics caches.
        cache_dir: where methods cache statistics (covariances) between runs.
        corpus: text file for statistics, or None for the shipped default.
        seed: the random seed every stochastic step derives from.
        kept: (prompt, subject) of the edits already active, whose answers a new edit must not move:
            methods that write a weight update hold it off these prompts' keys (ROME's ``keep_active``).
        active: the deltas applied to the model the method is given, in order, when the caller knows
            them (None: unknown); methods key caches of values read off the model on them.
    """

    base_hash: str = "unknown"
    cache_dir: Path | None = None
    corpus: Path | None = None
    seed: int = 0
    kept: tuple[tuple[str, str], ...] = ()
    active: tuple[Delta, ...] | None = None


@dataclass(frozen=True)
class EditResult:
    """One edit from method to commit: each stage fills in its part and hands the same object on.

    Attributes:
        delta: the weight change (④ the method).
        site: where it was written ({"modules": [...], "layers": [...], ...}).
        info: numbers from the computation (losses, steps, seconds) for the record.
        data: the training examples the delta was computed from (written to data.jsonl and hashed).
        attribution: a summary of the attribution that chose the site, when one ran.
        facts: the facts as edited, ``target_true`` filled from the model when it was missing (② the
            pipeline, which also fills ``probes``, ``report`` and ``seconds``).
        probes: the edit's tests (committed as probes.jsonl).
        report: the gate results; ``report.passed`` decides whether it may be committed (⑤).
        seconds: wall time of each stage.
        attempts: a summary of every layer tried, when the edit was retried (the kept one included).
        params: the method parameters of the kept attempt (recorded in edit.json).
        edit_id, commit, record: set once it is committed (⑥); None in a dry run or a refusal.
    """

    delta: Delta
    site: Mapping[str, Any]
    info: Mapping[str, Any] = field(default_factory=dict)
    data: Sequence[Mapping[str, Any]] = ()
    attribution: Mapping[str, Any] | None = None
    facts: tuple[Fact, ...] = ()
    probes: ProbeSet | None = None
    report: GateReport | None = None
    seconds: Mapping[str, float] = field(default_factory=dict)
    attempts: Sequence[Mapping[str, Any]] = ()
    params: Any = None
    edit_id: str | None = None
    commit: str | None = None
    record: EditRecord | None = None

    @property
    def fact(self) -> Fact:
        """The first fact of the edit (a passage's first probe)."""
        return self.facts[0]

    @property
    def gates(self) -> GateReport:
        """The gate report (the pipeline always sets it; a bare method result has none)."""
        if self.report is None:
            raise ValueError("this edit has not been gated yet")
        return self.report


@dataclass(frozen=True)
class RetryVariant:
    """One way to compute a refused edit again: ``overrides`` of the method's parameters, tried when one
    of the ``when`` gates refused the first attempt."""

    name: str
    overrides: Mapping[str, Any]
    when: frozenset[str]

    def applies(self, refused: Iterable[str], fixed: Iterable[str], params: Any) -> bool:
        """Whether a gate in ``refused`` calls for this variant, it changes no parameter in ``fixed``
        (those the user set explicitly) and it changes one of the attempt's ``params`` (a variant the
        parameters already hold would compute the same attempt again)."""
        new = any(getattr(params, k) != v for k, v in self.overrides.items())
        return bool(self.when & set(refused)) and not set(self.overrides) & set(fixed) and new


class EditMethod(ABC):
    """Base class of the edit methods. Subclasses set ``name`` and ``params_cls`` and register."""

    name: ClassVar[str]
    params_cls: ClassVar[type]
    #: True when one call handles a batch of facts jointly (MEMIT); else facts are edited one at a time.
    batched: ClassVar[bool] = False
    #: Parameter overrides to retry a refused edit with, each with the gates whose refusal calls for it
    #: (an edit that did not generalise wants a broader one, one that harmed something a gentler one).
    retry_variants: ClassVar[tuple[RetryVariant, ...]] = ()

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.params_cls()

    @classmethod
    def params_for(cls, model: Any, overrides: Mapping[str, Any] | None = None) -> Any:
        """The method's parameters with the model family's defaults and ``overrides`` applied."""
        params = cls.default_params(model)
        if overrides:
            names = {f.name for f in dataclasses.fields(params)}
            unknown = sorted(set(overrides) - names)
            if unknown:
                raise InvalidInputError(
                    f"Unknown {cls.name} parameter(s): {', '.join(unknown)}.",
                    hint=f"Known: {', '.join(sorted(names))}.",
                )
            params = dataclasses.replace(params, **overrides)
        return params

    @classmethod
    def default_params(cls, model: Any) -> Any:
        return cls.params_cls()

    @abstractmethod
    def compute(self, model: Any, tokenizer: Any, facts: Sequence[Fact], env: EditEnv) -> EditResult:
        """Compute the delta that writes ``facts``; must leave ``model`` bit-identical."""


def require_writes(facts: Sequence[Fact], method: str) -> None:
    """Refuse an empty call, or a fact to forget, for a method that only writes facts."""
    if not facts:
        raise InvalidInputError("No facts to edit.")
    if any(f.action != "edit" for f in facts):
        raise InvalidInputError(f"{method} writes facts; it cannot forget one.", hint="Use a forget method.")


EDIT_METHODS: Registry[type[EditMethod]] = Registry(
    "edit method",
    "cathrepo.edit_methods",
    builtins={"rome": "cathrepo.edits.rome.method", "memit": "cathrepo.edits.memit.method", "lora": "cathrepo.edits.lora",
              "ft": "cathrepo.edits.finetune", "auto": "cathrepo.edits.auto",
              **dict.fromkeys(("negate", "suppress", "replace"), "cathrepo.edits.forget"), "erase": "cathrepo.edits.erase"},
)


def get_method(name: str) -> type[EditMethod]:
    return EDIT_METHODS.get(name)
