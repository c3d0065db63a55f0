"""Decoding what the gates ask for: every gate's greedy continuations in as few passes as possible.

:func:`~cathrepo.gates.base.run_gates` collects each gate's :meth:`~cathrepo.gates.base.Gate.decodes`
and calls :func:`decode_requests`; continuations land in :attr:`~cathrepo.gates.base.GateRun.memo`, where
:meth:`~cathrepo.gates.base.GateRun.decoded` reads them. When "after" is "before" plus one delta, the
"before" and "after" rows run in one batch (the delta on the "after" rows only).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from cathrepo.delta import Delta, applied, applied_to_rows
from cathrepo.lm.decoding import AroundBatch, greedy_token_ids

if TYPE_CHECKING:
    from cathrepo.gates.base import Gate, GateRun


def decodes_unchanged_state(ctx: GateRun, gates: Sequence[Gate]) -> bool:
    """Whether ``gates`` ask for a ``base`` or ``before`` continuation not decoded yet."""
    return any(state != "after" and not ctx.has_decoded(state, prompt, tokens)
               for gate in gates for state, prompt, tokens in gate.decodes(ctx))


def decode_requests(ctx: GateRun, gates: Sequence[Gate]) -> None:
    """Decode what ``gates`` ask for into ``ctx.memo``: one batched pass when "after" is "before" plus
    one delta (its rows see the delta through :func:`~cathrepo.delta.applied_to_rows`), else one
    pass per state."""
    wanted: dict[tuple[str, str], int] = {}
    for gate in gates:
        for state, prompt, tokens in gate.decodes(ctx):
            wanted[(state, prompt)] = max(tokens, wanted.get((state, prompt), 0))
    if not wanted:
        return
    # a continuation decoded before (an earlier tier, or carried from an earlier attempt) is reused only
    # when it ran at least as many tokens as asked for now
    keys = sorted(k for k in wanted if not ctx.has_decoded(*k, wanted[k]))
    if not keys:
        return
    one_more = len(ctx.after) == len(ctx.before) + 1 and all(a is b for a, b in zip(ctx.after[:-1], ctx.before, strict=True))
    added = ctx.after[-1] if one_more else None
    if added is not None and {state for state, _ in keys} <= {"before", "after"}:
        ctx.say(f"decoding {len(keys)} continuations (before and after together)")
        with applied(ctx.model, *ctx.before):
            ids = greedy_token_ids(ctx.model, ctx.tokenizer, [p for _, p in keys], max_new_tokens=[wanted[k] for k in keys],
                                   around=_on_rows(ctx.model, added, [s == "after" for s, _ in keys]))
        ctx.memo.update({("decode", *k): (wanted[k], v) for k, v in zip(keys, ids, strict=True)})
        return
    for state in dict.fromkeys(state for state, _ in keys):  # one pass per state, each state once
        mine = [k for k in keys if k[0] == state]
        if mine:
            ctx.say(f"decoding {len(mine)} continuations ({state})")
            with applied(ctx.model, *ctx.deltas(state)):
                ids = greedy_token_ids(ctx.model, ctx.tokenizer, [p for _, p in mine],
                                       max_new_tokens=[wanted[k] for k in mine])
            ctx.memo.update({("decode", *k): (wanted[k], v) for k, v in zip(mine, ids, strict=True)})


def _on_rows(model: Any, delta: Delta, changed: Sequence[bool]) -> AroundBatch:
    """Decode the prompts flagged in ``changed`` with ``delta`` on top of the model, the others without."""

    def around(idx: Sequence[int]) -> AbstractContextManager[Any]:
        import torch

        rows = torch.tensor([changed[i] for i in idx])
        return applied_to_rows(model, delta, rows) if bool(rows.any()) else nullcontext()

    return around
