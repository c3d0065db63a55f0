"""What every command shares: opening the repository from ``-C``, parsing shared options, JSON output,
progress display, and rendering edit results and gate reports (one JSON shape, one line per gate)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cathrepo.exceptions import InvalidInputError

if TYPE_CHECKING:
    from cathrepo.edits.base import EditResult
    from cathrepo.facts.schema import EditRequest, Fact
    from cathrepo.gates.results import GateReport
    from cathrepo.repo import Repo


def repo_dir(ctx: click.Context) -> str:
    obj = ctx.find_root().obj or {}
    return str(obj.get("repo_dir", "."))


def open_repo(ctx: click.Context) -> Repo:
    from cathrepo.repo import Repo

    return Repo.open(repo_dir(ctx))


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@contextmanager
def progress(label: str, delay: float = 1.0) -> Iterator[Callable[[str], None]]:
    """A transient status line on stderr; yields the callback the library calls with each stage.

    It shows only when both stdout and stderr are terminals (piped output carries nothing but results)
    and only once the work has taken ``delay`` seconds, so quick commands do not flash a spinner.
    """
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        yield lambda _msg: None
        return
    from rich.console import Console

    status = Console(stderr=True).status(label)
    lock, done = threading.Lock(), threading.Event()

    def show() -> None:
        with lock:
            if not done.is_set():
                status.start()

    timer = threading.Timer(delay, show)
    timer.daemon = True
    timer.start()
    try:
        yield lambda msg: status.update(f"{label}: {msg}")
    finally:
        with lock:
            done.set()
            timer.cancel()
            status.stop()


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``["layer=8", "v_lr=0.3"]`` → ``{"layer": 8, "v_lr": 0.3}`` (values parsed as JSON when they can be)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--param '{item}' is not KEY=VALUE.", hint="For example: --param layer=8.")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def edit_requests(
    *, prompt: str | None, subject: str | None, target: str | None, target_true: str | None,
    facts_file: Path | None, passage_file: Path | None, limit: int | None, method: str | None,
    meta: Mapping[str, Any], batch_size: int = 1,
) -> tuple[list[EditRequest], str | None]:
    """What ``cathrepo edit`` was asked to write, and the method (a passage defaults to ``auto``).

    One fact from --prompt/--subject/--target, one request per ``batch_size`` facts of --file (one per
    fact by default), or one request holding every question synthesized from a --passage.
    """
    from cathrepo.facts.schema import EditRequest, Fact, load_facts

    if sum(bool(x) for x in (facts_file, passage_file, prompt or subject or target)) > 1:
        raise InvalidInputError("Give one of --file, --passage or --prompt/--subject/--target.")
    if passage_file:
        from cathrepo.facts.passage import Passage, synthesize_questions

        passage = Passage.from_file(passage_file)
        probes = synthesize_questions(passage)[: limit or None]
        request = EditRequest(probes[0], more=tuple(probes[1:]), passage=passage.to_dict(),
                              **{**meta, "source": meta.get("source") or passage.source})
        return [request], method or "auto"
    if batch_size < 1:
        raise InvalidInputError(f"--batch-size {batch_size} must be at least 1.")
    if batch_size > 1 and not facts_file:
        raise InvalidInputError("--batch-size groups the facts of --file.", hint="Pass --file FACTS with it.")
    if facts_file:
        facts = load_facts(facts_file, limit)
        return [EditRequest(facts[i], more=tuple(facts[i + 1 : i + batch_size]), **meta)
                for i in range(0, len(facts), batch_size)], method
    if prompt and subject and target:
        fact = Fact(prompt=prompt, subject=subject, target_new=target, target_true=target_true)
        return [EditRequest(fact, **meta)], method
    raise InvalidInputError("Nothing to edit.", hint="Pass --prompt, --subject and --target, --file or --passage.")


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


def echo_refusal(fact: Fact, report: object) -> None:
    """The refused fact and its gate table on stderr (the error line itself comes from ``cli.main``);
    ``report`` is a :class:`GateFailedError`'s ``results`` (a GateReport, or None)."""
    from cathrepo.gates.results import GateReport

    click.secho(f"[refused] {fact.prompt} -> {fact.target_new} (was: {fact.target_true or '?'})", fg="red", err=True)
    if isinstance(report, GateReport):
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
