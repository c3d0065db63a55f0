"""Teacher-forced scoring: log-probabilities of continuations, batched (used by every gate).

CounterFact's metrics compare the length-normalised probability of the new target against the true
one (ROME, Meng et al. 2022, §3): ``P(o) = exp(mean_t log p(o_t | prompt, o_<t))``. A continuation is
tokenized as ``" " + target`` after the prompt, the way the target follows the prompt in running text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import InvalidInputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Encoded:
    """A prompt and continuation as token ids; ``prompt_len`` splits them."""

    ids: list[int]
    prompt_len: int


def continuation_ids(tokenizer: Any, target: str) -> list[int]:
    """Token ids of ``target`` as a continuation (leading space), refusing empty results."""
    ids = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
    if not target.strip() or not ids:
        raise InvalidInputError(
            f"The target {target!r} tokenizes to nothing.", hint="Give a target with visible text."
        )
    return list(ids)


def encode(tokenizer: Any, prompt: str, target: str) -> Encoded:
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    return Encoded(prompt_ids + continuation_ids(tokenizer, target), len(prompt_ids))


def _pad_batch(tokenizer: Any, seqs: Sequence[list[int]], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):  # right padding keeps positions equal to the unpadded run
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def target_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 32,
) -> list[list[float]]:
    """Per-token log-probabilities of each target after its prompt, one list per pair."""
    import torch

    from cathrepo.models import model_device

    if len(prompts) != len(targets):
        raise ValueError("prompts and targets differ in length")
    encoded = [encode(tokenizer, p, t) for p, t in zip(prompts, targets, strict=True)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))  # less padding per batch
    results: list[list[float]] = [[] for _ in encoded]
    device = model_device(model)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _pad_batch(tokenizer, [encoded[i].ids for i in idx], device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (batch, seq, vocab)
        logp = torch.log_softmax(logits, dim=-1)
        for row, i in enumerate(idx):
            enc = encoded[i]
            positions = torch.arange(enc.prompt_len - 1, len(enc.ids) - 1, device=device)
            tokens = ids[row, enc.prompt_len :]
            tokens = tokens[: len(positions)]
            results[i] = logp[row, positions, tokens].tolist()
    return results


def mean_logprob(model: Any, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str]) -> list[float]:
    """Length-normalised log-probability of each target (the CounterFact scoring unit)."""
    return [sum(lp) / len(lp) for lp in target_logprobs(model, tokenizer, prompts, targets)]


def prefers(
    model: Any, tokenizer: Any, prompts: Sequence[str], new: Sequence[str], old: Sequence[str]
) -> list[tuple[float, float]]:
    """(mean log p(new), mean log p(old)) for each prompt, in one batched pass."""
    scores = mean_logprob(model, tokenizer, list(prompts) * 2, list(new) + list(old))
    n = len(prompts)
    return list(zip(scores[:n], scores[n:], strict=True))


def greedy_continuation(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 8) -> str:
    """The model's greedy continuation of ``prompt`` (decoded, stripped)."""
    import torch

    from cathrepo.models import model_device

    enc = tokenizer(prompt, return_tensors="pt").to(model_device(model))
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
