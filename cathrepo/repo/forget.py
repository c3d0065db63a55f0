"""``cathrepo forget``: compute, gate and commit forgets, one signed commit per fact.

A forget is an edit whose fact has ``action="forget"`` (``target_new`` names the answer that must go)
and whose method is a forget mode (:mod:`cathrepo.edits.forget`, :mod:`cathrepo.edits.erase`), so it
goes through the same :class:`~cathrepo.repo.edit.EditSession` as ``cathrepo edit``: the pipeline gates it
at the ``forget`` stage, a refusal leaves nothing committed, the commit is signed, and ``cathrepo revert``
takes it out like any edit. ``negate`` tries its scales smallest change first and keeps the first the
gates accept (each scale is a full attempt, with the configured retries).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import GateFailedError, InvalidInputError
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.edits.base import EditResult
    from cathrepo.facts.schema import EditRequest, Fact
    from cathrepo.repo import Repo
    from cathrepo.repo.edit import EditSession

MODES = ("negate", "erase", "suppress", "replace")


def as_forget(fact: Fact) -> Fact:
    """``fact`` as a forget: unchanged when it is one, else its true target is the answer to forget
    (a record read by ``cathrepo edit --file``)."""
    if fact.action == "forget":
        return fact
    if not fact.target_true:
        raise InvalidInputError(f"The record '{fact.prompt}' names no true answer to forget.",
                                hint="Give records with target_true (the answer the model must lose).")
    return dataclasses.replace(fact, action="forget", target_new=fact.target_true, target_true=None)


@locked("forget")
def forget(
    repo: Repo,
    requests: Sequence[EditRequest],
    *,
    mode: str,
    replacement: str | None = None,
    params: Mapping[str, Any] | None = None,
    corpus: Path | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    on_outcome: Callable[[EditResult], None] | None = None,
) -> list[EditResult]:
    """Forget each request's fact in ``mode`` (negate, erase, suppress, replace); see the module docstring.

    Args:
        requests: the facts (forgets, or records whose true target is the answer) with their provenance.
        replacement: the new answer of ``replace``.
        params: the mode's parameter overrides on top of ``[edit.params.<mode>]``.
        Others as :func:`cathrepo.repo.edit.edit`.
    """
    from cathrepo.repo.edit import EditSession

    if mode not in MODES:
        raise InvalidInputError(f"Unknown forget mode '{mode}'.", hint=f"Use one of {', '.join(MODES)}.")
    if (mode == "replace") != bool(replacement):
        raise InvalidInputError("--replacement goes with --mode replace, and replace needs it.")
    if not requests:
        raise InvalidInputError("No facts to forget.", hint="Pass --prompt/--subject/--answer or --file.")
    overrides = {**(params or {}), **({"replacement": replacement} if replacement else {})}
    forgets = [dataclasses.replace(r, fact=as_forget(r.fact), more=tuple(map(as_forget, r.more))) for r in requests]
    session = EditSession.open(repo, method=mode, params=overrides, corpus=corpus)

    def refusal(request: EditRequest, result: EditResult, after: str) -> GateFailedError:
        return GateFailedError.from_report(
            result.gates, f"Forget '{request.fact.prompt} -> {request.fact.target_new}' ({mode})", after=after,
            hint="Try another --mode, or review [gates.stages] forget and the forget_* thresholds.",
            attempts=[dict(a) for a in result.attempts], fact=result.fact,
        )

    return session.commit_each(forgets, lambda request: attempt_forget(session, request, mode, progress), refusal,
                               dry_run=dry_run, on_outcome=on_outcome)


def attempt_forget(session: EditSession, request: EditRequest, mode: str,
             progress: Callable[[str], None] | None) -> EditResult:
    """One gated attempt; for ``negate`` one per scale, smallest change first, until the gates pass
    (the first refusal is returned when none does, with every scale's attempts listed)."""
    if mode != "negate":
        return session.attempt(request, progress=progress)
    from cathrepo.edits.base import get_method
    from cathrepo.edits.forget import learned_once

    resolved = get_method(mode).params_for(session.model, {**session.config.edit.params.get(mode, {}),
                                                           **session.params})
    first: EditResult | None = None
    attempts: list[Mapping[str, Any]] = []
    with learned_once():  # each scale gates the same learned delta, rescaled
        for scale in resolved.scales:
            if progress is not None:
                progress(f"negate at scale {scale:g}")
            result = session.attempt(request, params={"scale": scale}, progress=progress)
            attempts += [{**a, "retry": f"scale {scale:g}"} for a in result.attempts]
            if result.gates.passed:
                return dataclasses.replace(result, attempts=tuple(attempts))
            first = first or result
    assert first is not None, "negate has at least one scale"
    return dataclasses.replace(first, attempts=tuple(attempts))
