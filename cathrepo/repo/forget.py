"""``cathrepo forget``: compute, gate and commit forgets, one signed commit per fact.

A forget is an edit whose fact has ``action="forget"`` (``target_new`` names the answer that must go)
and whose method is a forget mode (:mod:`cathrepo.edits.forget`, :mod:`cathrepo.edits.erase`), so it
goes through the same :class:`~cathrepo.repo.edit.EditSession` as ``cathrepo edit``: the pipeline gates it
at the ``forget`` stage, a refusal leaves nothing committed, the commit is signed, and ``cathrepo revert``
takes it out like any edit. ``negate`` finds the layers where its strongest scale forgets, then keeps the
smallest change the gates accept there (:func:`attempt_forget`).
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


#: The forgetting gates: a refusal by one of them says the answer is still there (not what the forget cost).
REMEMBERED = frozenset({"efficacy", "forget_rank", "forget_generation", "relearn"})


def attempt_forget(session: EditSession, request: EditRequest, mode: str,
                   progress: Callable[[str], None] | None) -> EditResult:
    """One gated attempt. ``negate`` first tries its strongest scale (with the configured layer retries):
    a layer where even that leaves the answer (a forgetting gate refuses) is given up, since a weaker
    negation of the same learned delta forgets less; at each layer where it forgets, the weaker scales are
    tried smallest change first, and the first the gates pass is kept (the strongest, if only it passes).
    A fact negation cannot forget is so refused after one attempt per layer, not one per layer and scale.
    When none passes, the first attempt is returned with every attempt listed."""
    if mode != "negate":
        return session.attempt(request, progress=progress)
    from cathrepo.edits.base import get_method
    from cathrepo.edits.forget import learned_once

    resolved = get_method(mode).params_for(session.model, {**session.config.edit.params.get(mode, {}),
                                                           **session.params})
    strongest = max(resolved.scales, key=abs)
    weaker = sorted((s for s in resolved.scales if s != strongest), key=abs)
    attempts: list[Mapping[str, Any]] = []

    def at(scale: float, layer: int | None = None) -> EditResult:
        if progress is not None:
            progress(f"negate at scale {scale:g}" + (f", layer {layer}" if layer is not None else ""))
        params = {"scale": scale, **({"layer": layer} if layer is not None else {})}
        result = session.attempt(request, params=params, progress=progress)
        attempts.extend({**a, "retry": f"scale {scale:g}"} for a in result.attempts)
        return result

    with learned_once():  # each scale gates the same learned delta (per layer), rescaled
        first = at(strongest)
        forgot = [a["site"]["layers"][0] for a in first.attempts
                  if a["site"].get("layers") and not {f["gate"] for f in a["failed"]} & REMEMBERED]
        for layer in dict.fromkeys(forgot):  # in the order tried, once each
            for scale in weaker:
                result = at(scale, layer)
                if result.gates.passed:
                    return dataclasses.replace(result, attempts=tuple(attempts))
            if first.gates.passed and first.site.get("layers", [None])[0] == layer:
                return dataclasses.replace(first, attempts=tuple(attempts))
    return dataclasses.replace(first, attempts=tuple(attempts))
