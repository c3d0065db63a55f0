"""``cathrepo edit``: compute, gate and commit edits, one signed commit per fact.

Facts are edited in order, each on top of the edits already active (the ones committed earlier in the
same call included). A fact whose gates fail stops the call with the measured numbers; the facts before
it stay committed (each is a complete commit) and nothing of the failing one is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import GateFailedError, InvalidInputError
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.config import RepoConfig
    from cathrepo.delta import Delta
    from cathrepo.edits.base import EditEnv, EditResult
    from cathrepo.facts.probes import ProbeSet
    from cathrepo.facts.schema import EditRequest
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.provenance.keys import SigningKey
    from cathrepo.repo import Repo

log = logging.getLogger(__name__)


@dataclass
class EditSession:
    """What editing several facts in a row shares: the verified base model, the repository's settings, and
    the active stack each new edit is computed and gated on (it grows as edits are committed or held).

    ``cathrepo edit`` and ``cathrepo ci`` both edit through one session, so a fact is realised the same way
    whichever of them asks.
    """

    repo: Repo
    config: RepoConfig
    model: Any
    tokenizer: Any
    method: str
    params: Mapping[str, Any]
    env: EditEnv
    policy: GatePolicy
    active: list[tuple[str, Delta]] = field(default_factory=list)
    suite: list[ProbeSet] = field(default_factory=list)

    @classmethod
    def open(cls, repo: Repo, *, method: str | None = None, params: Mapping[str, Any] | None = None,
             corpus: Path | None = None, rev: str = "HEAD", config: RepoConfig | None = None) -> EditSession:
        """Load the verified base model and the active edits of ``rev`` (their deltas and probes).

        ``config``: the settings and gate policy to edit under (default: the work tree's ``cathrepo.toml``;
        ``cathrepo ci`` passes the base branch's, so a branch cannot lower the bar its own edits meet)."""
        from cathrepo.edits.base import EditEnv, get_method
        from cathrepo.gates.policy import GatePolicy
        from cathrepo.models import cache_dir
        from cathrepo.repo.packs import load_packs
        from cathrepo.repo.state import active_edits, probe_sets
        from cathrepo.repo.verified import Verified

        config = config or repo.config
        name = method or config.edit.method
        get_method(name)  # an unknown method fails before the model loads
        model, tokenizer = repo.load_base()
        corpus_path = corpus or (Path(config.edit.corpus) if config.edit.corpus else None)
        env = EditEnv(base_hash=config.base.sha256, cache_dir=cache_dir(), corpus=corpus_path)
        edits = active_edits(repo, rev, verified=Verified.of(repo.root))
        suite = probe_sets(repo, [e.id for e in edits], rev)
        packs = load_packs(repo, rev)  # a pack stands in for the edits it folds
        folded = {eid for p in packs for eid in p.record.edits}
        active = [*((p.id, p.delta) for p in packs), *((e.id, e.delta) for e in edits if e.id not in folded)]
        return cls(repo, config, model, tokenizer, name, dict(params or {}), env,
                   GatePolicy.from_dict(config.gates), active, suite)

    def attempt(self, request: EditRequest, *, method: str | None = None, params: Mapping[str, Any] | None = None,
                progress: Callable[[str], None] | None = None) -> EditResult:
        """Compute and gate ``request``'s facts on the session's stack (with the configured retries); the
        result says whether the gates passed. ``method``/``params`` override the session's for this fact."""
        from cathrepo.edits.base import get_method
        from cathrepo.pipeline import run_with_retries
        from cathrepo.repo.packs import carried

        config = self.config
        name = method or self.method
        overrides = {**config.edit.params.get(name, {}), **self.params, **(params or {})}
        resolved = get_method(name).params_for(self.model, overrides)
        stack = [d for _, d in self.active]
        # a restrained stack ([stack] restrain) is computed on and gated as the sum it will be applied as
        restrained = {"after_of": lambda delta: carried(self.repo, [*stack, delta], config)} \
            if config.stack.restrain else {}
        return run_with_retries(
            self.model, self.tokenizer, request.facts, method_name=name, params=resolved, env=self.env,
            retry_layers=config.edit.retry_layers, retry_variants=config.edit.retry_variants, fixed=sorted(overrides),
            active=carried(self.repo, stack, config), suite=self.suite, policy=self.policy, progress=progress,
            **restrained,
        )

    def commit(self, request: EditRequest, result: EditResult, *, method: str | None = None,
               key: SigningKey | None = None, proposal: str | None = None, carries: str | None = None) -> EditResult:
        """Commit a passed attempt (made with ``method``, default the session's; signed with ``key``, default
        the repository's) and hold it on the stack. ``carries``: the edit a rebase recomputed this from."""
        from cathrepo.provenance.manifest import numerics
        from cathrepo.repo.commit import commit_edit

        result = commit_edit(self.repo, request, result, method=method or self.method, params=_params_dict(result.params),
                             numerics=numerics(self.model), key=key, proposal=proposal,
                             trailers={"Cathrepo-Carries": carries} if carries else None)
        assert result.edit_id is not None
        self.hold(result.edit_id, result)
        return result

    def commit_each(self, requests: Sequence[EditRequest], attempt: Callable[[EditRequest], EditResult],
                    refusal: Callable[[EditRequest, EditResult, str], GateFailedError], *, dry_run: bool = False,
                    on_outcome: Callable[[EditResult], None] | None = None) -> list[EditResult]:
        """Attempt each request in order and commit each the gates pass (none with ``dry_run``), each on
        top of the ones before; the first refusal stops the call with ``refusal(request, result, after)``
        (``after`` says how many facts before it were committed), and those stay committed."""
        results: list[EditResult] = []
        for i, request in enumerate(requests):
            result = attempt(request)
            if not result.gates.passed:
                raise refusal(request, result, f" The {i} fact(s) before it were committed." if i and not dry_run else "")
            if not dry_run:
                result = self.commit(request, result)
            results.append(result)
            if on_outcome is not None:
                on_outcome(result)
        return results

    def hold(self, edit_id: str, result: EditResult) -> None:
        """Put ``result``'s delta on the stack the next facts are computed and gated on."""
        assert result.probes is not None, "only a probed and gated result goes on the stack"
        self.active.append((edit_id, result.delta))
        self.suite.append(result.probes)


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
    from cathrepo.pipeline import attempt_refusal

    if not requests:
        raise InvalidInputError("No facts to edit.", hint="Pass --prompt/--subject/--target or --file.")
    session = EditSession.open(repo, method=method, params=params, corpus=corpus)

    def refusal(request: EditRequest, result: EditResult, after: str) -> GateFailedError:
        tried = "" if len(result.attempts) == 1 else (
            " Tried " + ", ".join(attempt_refusal(a) for a in result.attempts) + "; every one was refused.")
        return GateFailedError.from_report(
            result.gates, f"Edit '{request.fact.prompt} -> {request.fact.target_new}'", tried=tried, after=after,
            hint="Try another method (--method lora), or review [gates] in cathrepo.toml.",
            attempts=[dict(a) for a in result.attempts], fact=result.fact,
        )

    return session.commit_each(requests, lambda request: session.attempt(request, progress=progress), refusal,
                               dry_run=dry_run, on_outcome=on_outcome)


def _params_dict(params: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params)
