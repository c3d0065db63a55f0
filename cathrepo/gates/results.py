"""Gate results and reports: the records gates produce, with JSON, Markdown and HTML renderings.

A :class:`GateReport` goes into the edit record (``edit.json`` → ``gates``), into the commit trailers
(:meth:`GateReport.trailers`), and is printed or written by ``cathrepo gate --json/--report``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class GateResult:
    """The verdict of one gate.

    Attributes:
        name: the gate's registry name.
        passed: True when every threshold held (a skipped gate passes).
        metrics: measured numbers ("es", "ns_before", "ns_after", ...).
        thresholds: the limits applied, keyed by policy field ("efficacy_min": 1.0).
        detail: one human sentence: why it failed, or why it was skipped.
        seconds: time spent measuring.
        skipped: True when the gate had nothing to measure (no probes of its kind, no earlier edits), or
            was not run (``not_run``).
        not_run: True when a fail-fast run stopped before this gate (a cheaper gate had refused).
        flips: how far each probe that passed before and failed after fell (nats of lead), for the gates
            that count broken probes; a reviewer sees how close the flips were to the tolerance.
    """

    name: str
    passed: bool
    metrics: Mapping[str, float] = field(default_factory=dict)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0
    skipped: bool = False
    flips: tuple[float, ...] = ()
    not_run: bool = False

    @property
    def status(self) -> str:
        return "skip" if self.skipped else ("pass" if self.passed else "FAIL")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "skipped": self.skipped,
                "metrics": {k: _num(v) for k, v in self.metrics.items()},
                "thresholds": {k: _num(v) for k, v in self.thresholds.items()},
                "detail": self.detail, "seconds": round(self.seconds, 3),
                **({"flips": [round(x, 4) for x in self.flips]} if self.flips else {}),
                **({"not_run": True} if self.not_run else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateResult:
        return cls(name=data["name"], passed=bool(data["passed"]), metrics=dict(data.get("metrics") or {}),
                   thresholds=dict(data.get("thresholds") or {}), detail=data.get("detail", ""),
                   seconds=float(data.get("seconds", 0.0)), skipped=bool(data.get("skipped", False)),
                   flips=tuple(data.get("flips") or ()), not_run=bool(data.get("not_run", False)))

    def with_seconds(self, seconds: float) -> GateResult:
        return replace(self, seconds=seconds)

    def summary(self) -> str:
        """One line: ``efficacy pass es=1.000 em=0.412``."""
        return f"{self.name} {self.outcome()}"

    def outcome(self) -> str:
        """The status and the numbers: ``pass es=1.000 em=0.412``."""
        numbers = " ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items())
        return self.status + (f" {numbers}" if numbers else "")


def trailer_key(gate: str) -> str:
    """The commit trailer a gate's outcome is written under: ``Cathrepo-Gate-Cfplus`` for ``cfplus``."""
    return f"Cathrepo-Gate-{gate.replace('_', '-').capitalize()}"


def outcome_numbers(outcome: str) -> dict[str, float]:
    """The numbers of an :meth:`GateResult.outcome` as a trailer holds it (``pass ppl=25.7 growth=0.004``),
    rounded as written; a value that is not a number is left out."""
    numbers = {}
    for word in outcome.split()[1:]:
        key, sep, value = word.partition("=")
        if sep:
            try:
                numbers[key] = float(value)
            except ValueError:
                continue
    return numbers


def _num(v: Any) -> Any:
    return round(float(v), 6) if isinstance(v, float) else v


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class GateReport:
    """All gate results of one run, with the stage they ran at."""

    results: tuple[GateResult, ...]
    stage: str = "edit"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def __getitem__(self, name: str) -> GateResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def names(self) -> list[str]:
        return [r.name for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "stage": self.stage, "passed": self.passed,
                "meta": dict(self.meta), "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateReport:
        return cls(tuple(GateResult.from_dict(r) for r in data.get("results", ())),
                   data.get("stage", "edit"), dict(data.get("meta") or {}))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GateReport:
        return cls.from_dict(json.loads(text))

    def verdict(self, *, forced: bool = False) -> str:
        """``pass (9/9)``, ``FAIL (8/9)``, or ``FAIL (forced) (8/9)`` for a change committed anyway."""
        ran = [r for r in self.results if not r.skipped]
        word = "pass" if self.passed else ("FAIL (forced)" if forced else "FAIL")
        return f"{word} ({sum(r.passed for r in ran)}/{len(ran)})"

    def trailers(self, *, per_gate: bool = True, forced: bool = False) -> dict[str, str]:
        """The git commit trailers of this report (the only place they are built): ``Cathrepo-Gates``
        with the verdict, then ``Cathrepo-Gate-<Name>`` with each gate's status and numbers."""
        trailers = {"Cathrepo-Gates": self.verdict(forced=forced)}
        if per_gate:
            for r in self.results:
                trailers[trailer_key(r.name)] = r.outcome()
        return trailers

    def to_markdown(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"## Gates ({self.stage}): {verdict}", "", "| gate | result | metrics | thresholds | detail |",
                 "| --- | --- | --- | --- | --- |"]
        for r in self.results:
            lines.append("| " + " | ".join([
                r.name, r.status, _pairs(r.metrics), _pairs(r.thresholds), r.detail.replace("|", "\\|"),
            ]) + " |")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        rows = "\n".join(
            f'<tr class="{r.status.lower()}"><td>{html.escape(r.name)}</td><td>{r.status}</td>'
            f"<td>{html.escape(_pairs(r.metrics))}</td><td>{html.escape(_pairs(r.thresholds))}</td>"
            f"<td>{html.escape(r.detail)}</td></tr>"
            for r in self.results
        )
        return (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>cathrepo gates</title>\n"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px}.fail td{background:#fdd}.skip td{color:#888}</style></head><body>\n"
            f"<h2>Gates ({html.escape(self.stage)}): {verdict}</h2>\n<table>\n"
            "<tr><th>gate</th><th>result</th><th>metrics</th><th>thresholds</th><th>detail</th></tr>\n"
            f"{rows}\n</table></body></html>\n"
        )


def _pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())

