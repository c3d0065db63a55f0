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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_WORD = re.compile(r"\w+|[^\w\s]")


def greedy_continuations(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 12, batch_size: int = 32
) -> list[str]:
    """The greedy continuation of each prompt (decoded, special tokens dropped), in batches.

    Prompts are left-padded so that every row's next token sits at the same column; the attention mask
    keeps padding out and ``generate`` derives position ids from it, so a row decodes as it would alone.
    """
    import torch

    from cathrepo.models import model_device

    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [list(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
    return out


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
