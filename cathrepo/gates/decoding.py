"""Free generation and text statistics for the gates: batched greedy decoding, perplexity, n-gram entropy.

Teacher-forced scores alone overstate editing success two- to three-fold (free generation often ignores
an edit that wins the forced comparison), so the generation gate decodes. Fluency is ROME's weighted
bi-/tri-gram entropy of generated text (Meng et al. 2022, appendix): a degenerate model that repeats
itself scores low.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_WORD = re.compile(r"\w+|[^\w\s]")


def greedy_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | Sequence[int] = 12,
    batch_size: int = 32,
    rows_changed: Sequence[bool] | None = None,
    change: Any = None,
) -> list[str]:
    """The greedy continuation of each prompt (decoded, special tokens dropped), in batches.

    Args:
        max_new_tokens: one budget for all prompts, or one per prompt (a batch runs as long as its
            longest budget; shorter rows are cut).
        rows_changed, change: decode the rows flagged in ``rows_changed`` with the delta ``change``
            added on top of the model's weights and the others without it, in the same batches: the
            "before" and "after" continuations of a gate cost one decode (decoding is bound by reading
            the weights, not by the rows).
    """
    ids = greedy_token_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           rows_changed=rows_changed, change=change)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def greedy_token_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | Sequence[int] = 12,
    batch_size: int = 32,
    rows_changed: Sequence[bool] | None = None,
    change: Any = None,
) -> list[list[int]]:
    """:func:`greedy_continuations` as token ids (stop tokens dropped), so callers can cut them shorter."""
    import torch

    from cathrepo.edits.delta import applied_to_rows

    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    flags = list(rows_changed) if rows_changed is not None else [False] * len(prompts)
    if len(budgets) != len(prompts) or len(flags) != len(prompts):
        raise ValueError("one budget and one flag per prompt")
    encoded = [list(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (budgets[i], len(encoded[i])))
    out: list[list[int]] = [[] for _ in prompts]
    stop = _stop_ids(model, tokenizer)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        mask = torch.tensor([flags[i] for i in idx])
        with applied_to_rows(model, change, mask) if change is not None and bool(mask.any()) else _nothing():
            ids = greedy_ids(model, [encoded[i] for i in idx], [budgets[i] for i in idx], stop, _pad(tokenizer))
        for row, i in enumerate(idx):
            out[i] = ids[row]
    return out


def greedy_ids(model: Any, prompts: Sequence[list[int]], budgets: Sequence[int], stop: set[int],
               pad: int) -> list[list[int]]:
    """Greedy decoding of token-id prompts with a KV cache; each row stops at a stop id or its budget.

    Prompts are left-padded so every row's next token sits in the last column; the attention mask keeps
    padding out and position ids count real tokens only, so a row decodes as it would alone. Logits are
    computed only for the last position of each step.
    """
    import torch

    from cathrepo.models import cache_kwargs, hidden_and_head, model_device, output_cache

    device = model_device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    split = hidden_and_head(model)
    results: list[list[int]] = [[] for _ in prompts]
    done = torch.tensor([b <= 0 for b in budgets], device=device)
    cache = None
    step_ids, step_pos = ids, positions
    with torch.no_grad():
        for _ in range(max(budgets, default=0)):
            kwargs = cache_kwargs(split[0] if split else model, cache) if cache is not None else {"use_cache": True}
            if split:
                out = split[0](input_ids=step_ids, attention_mask=mask, position_ids=step_pos, **kwargs)
                logits = split[1](out.last_hidden_state[:, -1])  # (rows, vocab)
            else:
                out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, **kwargs)
                logits = out.logits[:, -1]
            cache = output_cache(out)
            nxt = logits.float().argmax(-1)  # (rows,)
            for row in range(len(prompts)):
                if not done[row]:
                    token = int(nxt[row])
                    if token in stop:
                        done[row] = True
                    else:
                        results[row].append(token)
                        done[row] = len(results[row]) >= budgets[row]
            if bool(done.all()):
                break
            step_ids = nxt[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return results


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids from the generation config (as ``generate`` stops), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


def _pad(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad or 0)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def contains_answer(text: str, answer: str) -> bool:
    """Whether ``answer`` occurs in ``text`` as whole words, ignoring case ("Paris" in "Paris, France")."""
    answer = answer.strip()
    if not answer:
        return False
    pattern = r"(?<!\w)" + re.escape(answer.lower()) + r"(?!\w)"
    return re.search(pattern, text.lower()) is not None


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of the n-gram entropies (bits) of ``text``'s word tokens (ROME's fluency measure)."""
    tokens = _WORD.findall(text.lower())
    values = []
    for n, w in zip(ns, weights, strict=True):
        grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(w * entropy)
    return sum(values) / len(values)


def perplexity(model: Any, tokenizer: Any, text: str, *, window: int = 256, batch_size: int = 8) -> float:
    """Perplexity of ``text`` read in non-overlapping windows of ``window`` tokens."""
    import torch

    from cathrepo.models import model_device

    config = getattr(model.config, "text_config", None) or model.config
    longest = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    window = min(window, int(longest)) if longest else window
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    chunks = [c for c in chunks if len(c) > 1]
    if not chunks:
        raise ValueError("the held-out text is shorter than two tokens")
    device = model_device(model)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        width = max(len(c) for c in batch)
        ids_t = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, c in enumerate(batch):
            ids_t[row, : len(c)] = torch.tensor(c)
            mask[row, : len(c)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids_t.to(device), attention_mask=mask.to(device), use_cache=False).logits
        nll = _shifted_nll(logits.float(), ids_t.to(device), mask.to(device))
        total_nll += float(nll.sum())
        total_tokens += int(mask[:, 1:].sum())
    return math.exp(total_nll / total_tokens)


def _shifted_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import torch

    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (batch, seq-1, vocab)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    return nll * mask[:, 1:]
