"""How commands render edit outcomes and gate reports: one JSON shape and one line per gate.

A committed, a dry-run and a refused edit print the same JSON object, so a script reads the verdict,
every gate's metrics and thresholds, and what was tried, whatever happened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from cathrepo.edits.base import EditResult
    from cathrepo.facts.schema import Fact
    from cathrepo.gates.results import GateReport


def edit_entry(status: str, fact: Fact, report: GateReport | None, *, edit_id: str | None = None,
               commit: str | None = None, attempts: Any = None) -> dict[str, Any]:
    """One fact's result as ``cathrepo edit --json`` prints it.

    Args:
        status: "committed", "dry-run" or "refused".
        attempts: what the library tried before its verdict (a list of dicts), when it says.
    """
    entry: dict[str, Any] = {"status": status, "id": edit_id, "commit": commit, "fact": fact.to_dict(),
                             "gates": report.to_dict() if report is not None else None}
    if attempts is not None:
        entry["attempts"] = list(attempts)
    return entry


def outcome_entry(result: EditResult) -> dict[str, Any]:
    """The entry of an edit the gates let through (committed, or a dry run)."""
    return edit_entry("committed" if result.commit else "dry-run", result.fact, result.report,
                      edit_id=result.edit_id, commit=result.commit, attempts=result.attempts)


def refused_entry(fact: Fact, exc: Any) -> dict[str, Any]:
    """The entry of an edit the gates refused, from the library's :class:`GateFailedError`."""
    return edit_entry("refused", fact, exc.results, attempts=getattr(exc, "attempts", None))


def echo_refusal(fact: Fact, report: GateReport | None) -> None:
    """The refused fact and its gate table on stderr (the error line itself comes from ``cli.main``)."""
    click.secho(f"[refused] {fact.prompt} -> {fact.target_new} (was: {fact.target_true or '?'})", fg="red", err=True)
    if report is not None:
        echo_gate_lines(report, err=True)


def echo_gate_lines(report: GateReport, *, err: bool = False, indent: str = "    ") -> None:
    """One line per gate (``efficacy pass es=1 em=0.41``); failures in red with their detail."""
    for result in report.results:
        line = f"{indent}{result.summary()}"
        if not result.passed:
            limits = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in result.thresholds.items())
            line += "".join(f"  ({x})" for x in (limits, result.detail) if x)
        click.secho(line, fg=None if result.passed else "red", err=err)
