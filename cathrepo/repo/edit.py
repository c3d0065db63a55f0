"""``cathrepo edit``: compute, gate and commit edits, one signed commit per fact.

Facts are edited in order, each on top of the edits already active (the ones committed earlier in the
same call included). A fact whose gates fail stops the call with the measured numbers; the facts before
it stay committed (each is a complete commit) and nothing of the failing one is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import GateFailedError, InvalidInputError
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.edits.base import EditResult
    from cathrepo.facts.schema import EditRequest
    from cathrepo.repo import Repo

log = logging.getLogger(__name__)


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
    on_outcome: Callable[[EditResult], None] | None = None,
) -> list[EditResult]:
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
    from cathrepo.edits.base import EditEnv, get_method
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.models import cache_dir
    from cathrepo.pipeline import attempt_refusal, run_with_retries
    from cathrepo.provenance.manifest import numerics
    from cathrepo.repo.commit import commit_edit
    from cathrepo.repo.state import active_edits, probe_sets
    from cathrepo.repo.verified import Verified

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
    env = EditEnv(base_hash=config.base.sha256, cache_dir=cache_dir(), corpus=corpus_path)
    active = [(e.id, e.delta) for e in active_edits(repo, "HEAD", verified=Verified.of(repo.root))]
    suite = probe_sets(repo, [eid for eid, _ in active], "HEAD")
    results: list[EditResult] = []
    for i, request in enumerate(requests):
        result = run_with_retries(
            model, tokenizer, request.facts, method_name=name, params=resolved, env=env,
            retry_layers=config.edit.retry_layers, retry_variants=config.edit.retry_variants, fixed=sorted(overrides),
            active=[d for _, d in active], suite=suite, policy=policy, progress=progress,
        )
        if not result.gates.passed:
            done = f" The {i} fact(s) before it were committed." if i and not dry_run else ""
            tried = "" if len(result.attempts) == 1 else (
                " Tried " + ", ".join(attempt_refusal(a) for a in result.attempts) + "; every one was refused.")
            raise GateFailedError.from_report(
                result.gates, f"Edit '{request.fact.prompt} -> {request.fact.target_new}'", tried=tried, after=done,
                hint="Try another method (--method lora), or review [gates] in cathrepo.toml.",
                attempts=[dict(a) for a in result.attempts], fact=result.fact,
            )
        if not dry_run:
            result = commit_edit(repo, request, result, method=name, params=_params_dict(result.params),
                                 numerics=numerics(model))
            assert result.edit_id is not None and result.probes is not None
            active.append((result.edit_id, result.delta))
            suite.append(result.probes)
        results.append(result)
        if on_outcome is not None:
            on_outcome(result)
    return results


def _params_dict(params: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params)
