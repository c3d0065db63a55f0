"""``cathrepo edit``: compute, gate and commit edits, one signed commit per fact.

Facts are edited in order, each on top of the edits already active (the ones committed earlier in the
same call included). A fact whose gates fail stops the call with the measured numbers; the facts before
it stay committed (each is a complete commit) and nothing of the failing one is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import GateFailedError, InvalidInputError
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.facts.schema import EditRequest, Fact
    from cathrepo.gates.results import GateReport
    from cathrepo.provenance.manifest import EditRecord
    from cathrepo.repo import Repo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditOutcome:
    """One fact's result: the committed edit (or, in a dry run, what would have been committed)."""

    fact: Fact  # the first fact of the edit (a passage's first probe)
    report: GateReport
    edit_id: str | None = None
    commit: str | None = None
    record: EditRecord | None = None
    seconds: Mapping[str, float] | None = None
    attempts: Sequence[Mapping[str, Any]] = ()


@locked("edit")
def edit(
    repo: Repo,
    requests: Sequence[EditRequest],
    *,
    method: str | None = None,
    params: Mapping[str, Any] | None = None,
    corpus: Path | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    on_outcome: Callable[[EditOutcome], None] | None = None,
) -> list[EditOutcome]:
    """Edit each request's fact; see the module docstring for the all-or-nothing rules.

    Args:
        requests: facts with their provenance (source, author, confidence, risk).
        method: edit method name (default: ``[edit] method`` of cathrepo.toml).
        params: method parameter overrides on top of ``[edit.params.<method>]``.
        corpus: text for covariance statistics (default: ``[edit] corpus``, else the shipped corpus).
        dry_run: compute and gate, but commit nothing.
        progress: called with a short message at each stage.
        on_outcome: called after each fact is committed (the CLI prints as it goes).
    """
    from cathrepo.edits.base import EditContext, get_method
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.models import cache_dir
    from cathrepo.pipeline import run_with_retries
    from cathrepo.provenance.manifest import numerics
    from cathrepo.repo.commit import commit_edit
    from cathrepo.repo.state import active_edits, probe_sets

    if not requests:
        raise InvalidInputError("No facts to edit.", hint="Pass --prompt/--subject/--target or --file.")
    config = repo.config
    name = method or config.edit.method
    method_cls = get_method(name)
    policy = GatePolicy.from_dict(config.gates)
    model, tokenizer = repo.load_base()
    overrides = {**config.edit.params.get(name, {}), **(params or {})}
    resolved = method_cls.params_for(model, overrides)
    corpus_path = corpus or (Path(config.edit.corpus) if config.edit.corpus else None)
    context = EditContext(base_hash=config.base.sha256, cache_dir=cache_dir(), corpus=corpus_path)
    active = [(e.id, e.delta) for e in active_edits(repo, "HEAD")]
    suite = probe_sets(repo, [eid for eid, _ in active], "HEAD")
    outcomes: list[EditOutcome] = []
    for i, request in enumerate(requests):
        result, attempts, used = run_with_retries(
            model, tokenizer, request.facts, method_name=name, params=resolved, context=context,
            retry_layers=config.edit.retry_layers, layer_fixed="layer" in overrides,
            active=[d for _, d in active], suite=suite, policy=policy, progress=progress,
        )
        if not result.report.passed:
            done = f" The {i} fact(s) before it were committed." if i and not dry_run else ""
            failures = "; ".join(f.summary() for f in result.report.failures)
            tried = "" if len(attempts) == 1 else " Tried layers " + ", ".join(
                f"{a['site'].get('layers', ['?'])[0]} ({', '.join(f['gate'] for f in a['failed'])})"
                for a in attempts) + "; every one was refused."
            error = GateFailedError(
                f"Edit '{request.fact.prompt} -> {request.fact.target_new}' failed its gates: {failures}."
                f"{tried} Nothing was committed for it.{done}",
                results=result.report,
                hint="Try another method (--method lora), or review [gates] in cathrepo.toml.",
                attempts=attempts, fact=result.fact,
            )
            raise error
        if dry_run:
            outcome = EditOutcome(result.fact, result.report, seconds=result.seconds, attempts=attempts)
        else:
            edit_id, sha, record = commit_edit(repo, request, result, method=name,
                                               params=_params_dict(used), numerics=numerics(model))
            active.append((edit_id, result.result.delta))
            suite.append(result.probes)
            outcome = EditOutcome(result.fact, result.report, edit_id, sha, record, result.seconds, attempts)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def _params_dict(params: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params)
