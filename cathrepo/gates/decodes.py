"""Decoding what the gates ask for: every gate's greedy continuations in as few passes as possible.

:func:`~cathrepo.gates.base.run_gates` collects each gate's :meth:`~cathrepo.gates.base.Gate.decodes`
and calls :func:`decode_requests`; continuations land in :attr:`~cathrepo.gates.base.GateRun.memo`, where
:meth:`~cathrepo.gates.base.GateRun.decoded` reads them. When "after" is "before" plus one delta, the
"before" and "after" rows run in one batch (the delta on the "after" rows only).

That batch can also run beside the gates' teacher-forced scoring (:func:`decode_beside`): a decode is
bound by reading the weights and gains nothing from a second thread, while scoring many rows uses every
thread it gets. On the CPU the decode then runs in a thread of its own, on a copy of the model that
shares every weight no delta of the run touches, while retention and the suite are measured on the
model itself (BENCHMARKS.md: "Decoding in a thread beside retention and the suite").
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from cathrepo.delta import Delta, applied, applied_to_rows
from cathrepo.lm.decoding import AroundBatch, EncodedPrompts, few_rows_limit, greedy_token_ids
from cathrepo.models import get_module, model_device

if TYPE_CHECKING:
    from cathrepo.gates.gate import Gate, GateRun

Key = tuple[str, str]  # (state, prompt)


def decodes_unchanged_state(ctx: GateRun, gates: Sequence[Gate]) -> bool:
    """Whether ``gates`` ask for a ``base`` or ``before`` continuation not decoded yet."""
    return any(state != "after" and not ctx.has_decoded(state, prompt, tokens)
               for gate in gates for state, prompt, tokens in gate.decodes(ctx))


def _wanted(ctx: GateRun, gates: Sequence[Gate]) -> tuple[list[Key], dict[Key, int]]:
    """The (state, prompt) pairs ``gates`` ask for that are not decoded yet, and each one's budget."""
    wanted: dict[Key, int] = {}
    for gate in gates:
        for state, prompt, tokens in gate.decodes(ctx):
            wanted[(state, prompt)] = max(tokens, wanted.get((state, prompt), 0))
    # a continuation decoded before (an earlier tier, or carried from an earlier attempt) is reused only
    # when it ran at least as many tokens as asked for now
    return sorted(k for k in wanted if not ctx.has_decoded(*k, wanted[k])), wanted


def _added(ctx: GateRun, keys: Sequence[Key]) -> Delta | None:
    """The one delta "after" adds to "before", when ``keys`` are all of those two states (then one batch
    decodes them, the delta on the "after" rows only); else None."""
    one_more = len(ctx.after) == len(ctx.before) + 1 and all(a is b for a, b in zip(ctx.after[:-1], ctx.before, strict=True))
    if one_more and {state for state, _ in keys} <= {"before", "after"}:
        return ctx.after[-1]
    return None


def _store(ctx: GateRun, keys: Sequence[Key], wanted: dict[Key, int], ids: Sequence[list[int]]) -> None:
    ctx.memo.update({("decode", *k): (wanted[k], v) for k, v in zip(keys, ids, strict=True)})


def decode_requests(ctx: GateRun, gates: Sequence[Gate]) -> None:
    """Decode what ``gates`` ask for into ``ctx.memo``: one batched pass when "after" is "before" plus
    one delta (its rows see the delta through :func:`~cathrepo.delta.applied_to_rows`), else one
    pass per state."""
    keys, wanted = _wanted(ctx, gates)
    if not keys:
        return
    added = _added(ctx, keys)
    if added is not None:
        ctx.say(f"decoding {len(keys)} continuations (before and after together)")
        with applied(ctx.model, *ctx.before):
            ids = greedy_token_ids(ctx.model, ctx.tokenizer, [p for _, p in keys], max_new_tokens=[wanted[k] for k in keys],
                                   around=_on_rows(ctx.model, added, [s == "after" for s, _ in keys]))
        _store(ctx, keys, wanted, ids)
        return
    for state in dict.fromkeys(state for state, _ in keys):  # one pass per state, each state once
        mine = [k for k in keys if k[0] == state]
        if mine:
            ctx.say(f"decoding {len(mine)} continuations ({state})")
            with applied(ctx.model, *ctx.deltas(state)):
                ids = greedy_token_ids(ctx.model, ctx.tokenizer, [p for _, p in mine],
                                       max_new_tokens=[wanted[k] for k in mine])
            _store(ctx, mine, wanted, ids)


class BesideDecode:
    """A decode running in a thread of its own (:func:`decode_beside`): :meth:`settle` gives the
    caller's thread its threads back once the decode is done (call it between batches), :meth:`finish`
    waits for it, gives them back and stores the continuations (raising what the decode raised)."""

    def __init__(self, ctx: GateRun, keys: list[Key], wanted: dict[Key, int], work: Callable[[], list[list[int]]],
                 threads: int) -> None:
        import torch

        self.ctx, self.keys, self.wanted, self.threads = ctx, keys, wanted, threads
        self.box: dict[str, Any] = {}
        self.done = threading.Event()
        self.settled = False

        def run() -> None:
            try:
                self.box["ids"] = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self.box["error"] = exc
            finally:
                self.done.set()

        torch.set_num_threads(1)
        self.thread = threading.Thread(target=run, name="cathrepo-decode", daemon=True)
        try:
            self.thread.start()
        except BaseException:
            self.settle(force=True)
            raise

    def settle(self, force: bool = False) -> None:
        """In the caller's thread: its threads back, once the decode is done (or ``force``)."""
        import torch

        if not self.settled and (force or self.done.is_set()):
            torch.set_num_threads(self.threads)
            self.settled = True

    def finish(self) -> None:
        """Wait, take the threads back and store the continuations (once; later calls do nothing)."""
        self.thread.join()
        self.settle(force=True)
        if "error" in self.box:
            raise self.box["error"]
        if "ids" in self.box:
            _store(self.ctx, self.keys, self.wanted, self.box.pop("ids"))


def decode_beside(ctx: GateRun, gates: Sequence[Gate]) -> BesideDecode | None:
    """Start decoding what ``gates`` ask for in a thread of its own (a :class:`BesideDecode`); None where
    it cannot run beside: a model off the CPU, a single thread, nothing to decode, or states that are
    not "before" plus one delta.

    Until :meth:`BesideDecode.settle` finds the decode done, torch runs one thread per Python thread
    (the decode's and the caller's). The caller must not touch the tokenizer's state or apply deltas to
    modules other than those of ``ctx``'s deltas; it may apply those to ``ctx.model``: the decode's copy
    has its own. The decode computes its products as the caller's thread count would
    (``few_rows_limit``), so its tokens are those :func:`decode_requests` gives.
    """
    import torch

    if model_device(ctx.model).type != "cpu" or torch.get_num_threads() < 2:
        return None
    keys, wanted = _wanted(ctx, gates)
    added = _added(ctx, keys) if keys else None
    if added is None:
        return None
    prompts = EncodedPrompts.of(ctx.model, ctx.tokenizer, [p for _, p in keys], [wanted[k] for k in keys])
    model = private_copy(ctx.model, [*ctx.before, *ctx.after])
    around = _on_rows(model, added, [s == "after" for s, _ in keys])
    limit = few_rows_limit()

    def work() -> list[list[int]]:
        with applied(model, *ctx.before):
            return prompts.decode(model, around=around, rows_limit=limit)

    ctx.say(f"decoding {len(keys)} continuations (before and after together, beside the scoring)")
    return BesideDecode(ctx, keys, wanted, work, torch.get_num_threads())


def private_copy(model: Any, deltas: Sequence[Delta]) -> Any:
    """A copy of ``model`` (new module objects, so hooks and replaced forwards on either are the other's
    business) that shares every parameter except the weights ``deltas`` change, which it copies: a
    delta applied in place to one of them does not reach the other."""
    touched = {id(get_module(model, name).weight) for delta in deltas for name in delta.factors}
    shared = {id(p): p for p in model.parameters() if id(p) not in touched}
    return copy.deepcopy(model, memo=dict(shared))


def _on_rows(model: Any, delta: Delta, changed: Sequence[bool]) -> AroundBatch:
    """Decode the prompts flagged in ``changed`` with ``delta`` on top of the model, the others without."""

    def around(idx: Sequence[int]) -> AbstractContextManager[Any]:
        import torch

        rows = torch.tensor([changed[i] for i in idx])
        return applied_to_rows(model, delta, rows) if bool(rows.any()) else nullcontext()

    return around
