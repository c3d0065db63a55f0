"""Free generation: the one greedy decoder (batched, with a KV cache), used by probes and gates.

Teacher-forced scores alone overstate editing success two- to three-fold (free generation often ignores
an edit that wins the forced comparison), so the gates decode. Decoding here is bound by reading the
weights, not by the rows, so callers put every prompt they need into one call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from cathrepo.lm.scoring import hidden_and_head
from cathrepo.lm.tokens import pad, pad_id
from cathrepo.models import cache_kwargs, model_device, output_cache

#: Given the prompt indices of one batch, a context manager to decode that batch inside.
AroundBatch = Callable[[Sequence[int]], AbstractContextManager[Any]]
#: Given a step's logits (one row per prompt still decoding) and those prompts' indices, the next tokens.
Choose = Callable[[Any, Sequence[int]], Any]


def greedy_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | Sequence[int] = 12,
    batch_size: int = 32,
    around: AroundBatch | None = None,
) -> list[str]:
    """The greedy continuation of each prompt (decoded, special tokens dropped), in batches.

    Args:
        max_new_tokens: one budget for all prompts, or one per prompt (a batch runs as long as its
            longest budget; a row whose budget is spent leaves the batch).
        around: called with each batch's prompt indices, returns the context the batch decodes in;
            the gates use it to add a delta to some rows only, so the "before" and "after"
            continuations cost one decode.
    """
    ids = greedy_token_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           around=around)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def sampled_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    seed: int,
    max_new_tokens: int = 12,
    batch_size: int = 32,
) -> list[str]:
    """One continuation of each prompt sampled at temperature 1 from the full distribution, decoded in
    batches like :func:`greedy_continuations`. Prompt ``i`` draws from its own generator seeded with
    ``(seed, i)``, so its continuation is the same whatever the batch it decodes in."""
    import torch

    encoded = EncodedPrompts.of(model, tokenizer, prompts, max_new_tokens)
    generators = [torch.Generator(device=model_device(model)).manual_seed(seed * 1_000_003 + i) for i in range(len(prompts))]

    def sample(logits: Any, rows: Sequence[int]) -> Any:
        probs = torch.softmax(logits.float(), -1)
        return torch.cat([torch.multinomial(probs[k], 1, generator=generators[row]) for k, row in enumerate(rows)])

    ids = encoded.decode(model, batch_size=batch_size, choose=sample)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def greedy_token_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | Sequence[int] = 12,
    batch_size: int = 32,
    around: AroundBatch | None = None,
) -> list[list[int]]:
    """:func:`greedy_continuations` as token ids (stop tokens dropped), so callers can cut them shorter."""
    return EncodedPrompts.of(model, tokenizer, prompts, max_new_tokens).decode(model, batch_size=batch_size, around=around)


@dataclass(frozen=True)
class EncodedPrompts:
    """Prompts made ready to decode: their token ids, budgets, stop ids and padding id. Everything that
    reads the tokenizer happens here, so :meth:`decode` touches only the model (a thread may run it while
    another uses the tokenizer)."""

    ids: tuple[list[int], ...]
    budgets: tuple[int, ...]
    stop: frozenset[int]
    fill: int

    @classmethod
    def of(cls, model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int | Sequence[int]) -> EncodedPrompts:
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(budgets) != len(prompts):
            raise ValueError("one budget per prompt")
        return cls(tuple(list(tokenizer(p)["input_ids"]) for p in prompts), tuple(budgets),
                   frozenset(_stop_ids(model, tokenizer)), pad_id(tokenizer))

    def decode(self, model: Any, *, batch_size: int = 32, around: AroundBatch | None = None,
               rows_limit: int | None = None, choose: Choose | None = None) -> list[list[int]]:
        """Greedy token ids per prompt (``choose``: the next tokens another way, given the prompts'
        indices), in batches of prompts of similar budget and length; ``rows_limit`` is handed to
        :func:`few_row_products`."""
        order = sorted(range(len(self.ids)), key=lambda i: (self.budgets[i], len(self.ids[i])))
        out: list[list[int]] = [[] for _ in self.ids]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows_around = (lambda local, idx=idx: around([idx[r] for r in local])) if around is not None else None
            rows_choose = (lambda logits, local, idx=idx: choose(logits, [idx[r] for r in local])) if choose else None
            ids = greedy_ids(model, [self.ids[i] for i in idx], [self.budgets[i] for i in idx], set(self.stop),
                             self.fill, around=rows_around, rows_limit=rows_limit, choose=rows_choose)
            for row, i in enumerate(idx):
                out[i] = ids[row]
        return out


def greedy_ids(model: Any, prompts: Sequence[list[int]], budgets: Sequence[int], stop: set[int],
               fill: int, around: AroundBatch | None = None, rows_limit: int | None = None,
               choose: Choose | None = None) -> list[list[int]]:
    """Greedy decoding of token-id prompts with a KV cache; each row stops at a stop id or its budget.

    Prompts are left-padded so every row's next token sits in the last column; the attention mask keeps
    padding out and position ids count real tokens only, so a row decodes as it would alone. Logits are
    computed only for the last position of each step. A row that is done leaves the batch (its cache
    rows are dropped), so a short budget beside a long one costs only its own steps. ``around`` is
    called with the rows still decoding (indices into ``prompts``) and returns the context they decode
    in, entered anew whenever that set shrinks. ``rows_limit`` is handed to :func:`few_row_products`.
    ``choose`` picks each step's next tokens from the logits of the rows still decoding (default: argmax).
    """
    import torch

    device = model_device(model)
    batch = pad(prompts, fill, device, left=True)
    ids, mask = batch.ids, batch.mask
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    split = hidden_and_head(model)
    results: list[list[int]] = [[] for _ in prompts]
    live = [row for row, b in enumerate(budgets) if b > 0]  # rows still decoding, in batch order
    if len(live) < len(prompts):
        ids, mask, positions = ids[live], mask[live], positions[live]
    cache = None
    step_ids, step_pos = ids, positions
    finished: set[int] = set()
    with torch.no_grad(), few_row_products(model, rows_limit), ExitStack() as rows_context:
        if live and around is not None:
            rows_context.enter_context(around(live))
        for _ in range(max(budgets, default=0) if live else 0):
            kwargs = cache_kwargs(split[0] if split else model, cache) if cache is not None else {"use_cache": True}
            if split:
                out = split[0](input_ids=step_ids, attention_mask=mask, position_ids=step_pos, **kwargs)
                logits = split[1](out.last_hidden_state[:, -1])  # (live rows, vocab)
            else:
                out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, **kwargs)
                logits = out.logits[:, -1]
            cache = output_cache(out)
            nxt = logits.float().argmax(-1) if choose is None else choose(logits, live)  # (rows in the batch,)
            keep = []  # batch positions of the rows that decode on
            for k, row in enumerate(live):
                if row in finished:
                    continue
                token = int(nxt[k])
                if token not in stop:
                    results[row].append(token)
                    if len(results[row]) < budgets[row]:
                        keep.append(k)
                        continue
                finished.add(row)
            if not keep:
                break
            step_ids = nxt[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if len(keep) < len(live) and hasattr(cache, "batch_select_indices"):  # drop the done rows
                picked = torch.tensor(keep, device=device)
                cache.batch_select_indices(picked)
                step_ids, step_pos, mask = step_ids[picked], step_pos[picked], mask[picked]
                live = [live[k] for k in keep]
                if around is not None:
                    rows_context.close()
                    rows_context.enter_context(around(live))
            # (a cache that cannot drop rows keeps them in the batch; their tokens are ignored)
    return results


# --- few-row products on the CPU ------------------------------------------------------------------
#
# A decoding step multiplies every weight matrix by a handful of rows. PyTorch computes a linear layer
# as ``x Wᵀ``, and with that few rows MKL barely uses a second thread; the same product computed as
# ``(W xᵀ)ᵀ`` splits the weight's output rows across threads. On the 2-vCPU machine of BENCHMARKS.md
# (float32, the embedded model's 210 matrices) a pass over 4 rows took 54 ms as ``x Wᵀ`` and 29 ms as
# ``(W xᵀ)ᵀ``; on one thread the second form still wins up to 4 rows and loses from 6. The two forms
# agree to float32 rounding (the order of the sums differs), which decoding tolerates as it tolerates
# a different batch size.

#: Rows up to which a linear layer is computed as ``(W xᵀ)ᵀ`` on one thread, and on more threads.
FEW_ROWS = (4, 32)


def few_rows_limit() -> int:
    """The most rows a linear layer computes as ``(W xᵀ)ᵀ`` with the current thread count."""
    import torch

    return FEW_ROWS[1] if torch.get_num_threads() > 1 else FEW_ROWS[0]


@contextmanager
def few_row_products(model: Any, limit: int | None = None) -> Iterator[None]:
    """While open, the CPU model's ``nn.Linear`` layers compute inputs of at most ``limit`` rows
    (default: :func:`few_rows_limit`) as ``(W xᵀ)ᵀ`` (larger inputs, a GPU model, or a layer whose
    forward is already replaced are left as they are); every layer is restored on exit. A decode that
    runs on fewer threads than the one it must match passes that one's limit: the two forms round
    differently."""
    import torch

    if model_device(model).type != "cpu":
        yield
        return
    limit = few_rows_limit() if limit is None else limit
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and "forward" not in vars(m)]

    def make(layer: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        plain = layer.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.dim() < 2 or x.numel() > limit * x.shape[-1] or x.dtype != layer.weight.dtype:
                return plain(x)
            out = (layer.weight @ x.reshape(-1, x.shape[-1]).T).T
            if layer.bias is not None:
                out = out + layer.bias
            return out.reshape(*x.shape[:-1], layer.weight.shape[0])

        return forward

    for layer in layers:
        layer.forward = make(layer)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        for layer in layers:
            vars(layer).pop("forward", None)


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids from the generation config (as ``generate`` stops), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}
