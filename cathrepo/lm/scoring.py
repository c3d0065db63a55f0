"""Teacher-forced scoring: the output head, log-probabilities of continuations (batched), perplexity, KL.

CounterFact's metrics compare the length-normalised probability of the new target against the true
one (ROME, Meng et al. 2022, §3): ``P(o) = exp(mean_t log p(o_t | prompt, o_<t))``. A continuation is
tokenized as ``" " + target`` after the prompt, the way the target follows the prompt in running text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.lm.replay import Lower, lower_layers
from cathrepo.lm.tokens import continuation_ids, encode, pad, pad_id
from cathrepo.models import model_device

if TYPE_CHECKING:
    import torch


# --- the output head ------------------------------------------------------------------------------
#
# Running the body and then the head only at the positions a score or loss reads saves the vocabulary
# projection everywhere else (on a small model the head is a fifth of the work per token). Gemma-2's
# final logit soft-capping, ``tanh(logits / cap) · cap``, is applied here and nowhere else.


def logit_cap(model: Any) -> float | None:
    """The model's final logit soft-cap (Gemma-2), or None."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    cap = getattr(config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The output embedding applied to final-norm states, soft-capped where the model caps."""
    import torch

    logits = model.get_output_embeddings()(hidden)
    cap = logit_cap(model)
    return torch.tanh(logits / cap) * cap if cap else logits


def hidden_and_head(model: Any) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor]] | None:
    """The model's body (returns the final hidden states) and its output head as a function, or None
    for an architecture that does not split this way (then callers run the whole model)."""
    body = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or body is model or head is None:
        return None
    return body, lambda hidden: head_logits(model, hidden)


#: Padded tokens per teacher-forced forward pass. A CPU forward costs about the padded tokens it is given,
#: so rows of alike length go together: 125 known-fact prompts of 4 to 23 tokens cost 4.3-5.0 s as one
#: padded batch of 128 rows and 2.4-2.8 s in length-sorted batches of at most this many tokens (2 vCPU,
#: float32; BENCHMARKS.md).
BATCH_TOKENS = 256


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """Indices of ``lengths`` in batches of alike length: sorted shortest first, a batch closes at
    ``batch_size`` rows or when one more row would pad it past ``max_tokens`` tokens (a row longer than
    that goes alone)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if current and (len(current) >= batch_size or (len(current) + 1) * lengths[i] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


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

    if len(prompts) != len(targets):
        raise ValueError("prompts and targets differ in length")
    encoded = [encode(tokenizer, p, t) for p, t in zip(prompts, targets, strict=True)]
    results: list[list[float]] = [[] for _ in encoded]
    device = model_device(model)
    for idx in length_batches([len(e.ids) for e in encoded], batch_size):
        batch = pad([encoded[i].ids for i in idx], pad_id(tokenizer), device)
        ids, mask = batch.ids, batch.mask
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




# --- packed scoring: one prompt, several continuations, one row -----------------------------------
#
# Scoring "new" and "old" after the same prompt the plain way runs the prompt twice. Packing puts the
# prompt once and every continuation after it in one row; a 4D attention mask lets each continuation see
# the prompt and its own earlier tokens only, and position ids restart after the prompt for each branch,
# so every branch computes exactly what it would alone. The unembedding is applied only at the positions
# whose next-token distribution is needed (it is a fifth of a small model's work per token).


@dataclass(frozen=True)
class PromptScores:
    """Scores of the continuations of one prompt.

    Attributes:
        logprobs: per continuation, the log-probability of each of its tokens.
        top1: the most likely next token id at the end of the prompt.
        next_logprobs: the next-token log-distribution at the end of the prompt, shape (vocab,), when
            asked for (CounterFact+'s neighbourhood KL needs it), else None.
    """

    logprobs: tuple[tuple[float, ...], ...]
    top1: int
    next_logprobs: torch.Tensor | None = None
    top: tuple[float, float] = (0.0, 0.0)  # log-probabilities of the two most likely next tokens

    def first_margin(self, token: int, i: int | None = None) -> float:
        """How far ``token`` leads (positive) or trails the best other next token, in nats.

        ``token``'s log-probability is continuation ``i``'s first one when given, else it must be top1.
        """
        lp = self.logprobs[i][0] if i is not None else self.top[0]
        return lp - (self.top[1] if token == self.top1 else self.top[0])

    def mean(self, i: int) -> float:
        """Length-normalised log-probability of continuation ``i``."""
        lp = self.logprobs[i]
        return sum(lp) / len(lp)


@dataclass(frozen=True)
class _Packed:
    ids: list[int]
    positions: list[int]
    branches: list[tuple[int, int]]  # [start, end) of each continuation in ``ids``
    prompt_len: int


def _pack(prompt_ids: list[int], continuations: Sequence[list[int]]) -> _Packed:
    ids, positions, branches = list(prompt_ids), list(range(len(prompt_ids))), []
    for cont in continuations:
        branches.append((len(ids), len(ids) + len(cont)))
        ids += cont
        positions += range(len(prompt_ids), len(prompt_ids) + len(cont))
    return _Packed(ids, positions, branches, len(prompt_ids))


def _packed_mask(rows: Sequence[_Packed], width: int, dtype: Any) -> torch.Tensor:
    """Additive mask (batch, 1, width, width): 0 where a token may attend, the dtype's min elsewhere."""
    import torch

    allowed = torch.zeros((len(rows), width, width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for r, row in enumerate(rows):
        p = row.prompt_len
        allowed[r, :p, :p] = causal[:p, :p]
        for start, end in row.branches:
            allowed[r, start:end, :p] = True
            allowed[r, start:end, start:end] = causal[: end - start, : end - start]
        pad = torch.arange(len(row.ids), width)
        allowed[r, pad, pad] = True  # padding attends to itself only, so no row is empty
    mask = torch.zeros((len(rows), 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return mask


def _logits_at(model: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
               rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits (n, vocab) at (rows[i], cols[i]) only, running the unembedding on those states alone."""
    split = hidden_and_head(model)
    if split is None:  # a model we cannot split: fall back to the full forward
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        return logits[rows, cols].float()
    body, head = split
    hidden = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
    return head(hidden[rows, cols]).float()  # (n, vocab)


#: Called before each batch of :func:`score_continuations` (see :func:`between_batches`).
_BETWEEN: list[Callable[[], None]] = []


@contextmanager
def between_batches(fn: Callable[[], None]) -> Iterator[None]:
    """While open, ``fn()`` runs before every batch :func:`score_continuations` scores in this process:
    a caller that lent its threads to work beside the scoring takes them back there as soon as that
    work is done (:func:`cathrepo.gates.decodes.decode_beside`)."""
    _BETWEEN.append(fn)
    try:
        yield
    finally:
        _BETWEEN.remove(fn)


def score_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: Sequence[Sequence[str]],
    *,
    batch_size: int = 64,
    next_distribution: Sequence[bool] | bool = False,
    lower: Lower | None = None,
) -> list[PromptScores]:
    """Token log-probabilities of several continuations of each prompt, with each prompt run once.

    Args:
        prompts: the prompts.
        continuations: per prompt, the targets to score after it (each tokenized with a leading space);
            may be empty, to get only the next-token prediction.
        batch_size: packed rows per forward pass.
        next_distribution: per prompt (or for all), whether to return the full next-token distribution.
        lower: the layers below a change and what they read: a batch scored before in a state that
            reads the same there replays them (:mod:`cathrepo.lm.replay`).
    """
    import torch

    if len(prompts) != len(continuations):
        raise ValueError("prompts and continuations differ in length")
    keep = [next_distribution] * len(prompts) if isinstance(next_distribution, bool) else list(next_distribution)
    packed = [
        _pack(list(tokenizer(p)["input_ids"]), [continuation_ids(tokenizer, t) for t in conts])
        for p, conts in zip(prompts, continuations, strict=True)
    ]
    out: list[PromptScores | None] = [None] * len(packed)
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    for idx in length_batches([len(r.ids) for r in packed], batch_size):
        for fn in tuple(_BETWEEN):
            fn()
        rows = [packed[i] for i in idx]
        width = max(len(r.ids) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        # Positions whose next-token distribution we need: the prompt's end, then each branch token but
        # the last one (branch token t is predicted from the state of token t-1, or of the prompt's end).
        need_r: list[int] = []
        need_c: list[int] = []
        for r, row in enumerate(rows):
            ids[r, : len(row.ids)] = torch.tensor(row.ids)
            pos[r, : len(row.ids)] = torch.tensor(row.positions)
            need_r.append(r)
            need_c.append(row.prompt_len - 1)
            for b_start, b_end in row.branches:
                need_r += [r] * (b_end - b_start - 1)
                need_c += range(b_start, b_end - 1)
        mask = _packed_mask(rows, width, dtype)
        with torch.no_grad(), lower_layers(model, lower, ids, pos, mask):
            logits = _logits_at(model, ids.to(device), mask.to(device), pos.to(device),
                                torch.tensor(need_r, device=device), torch.tensor(need_c, device=device))
        logp = torch.log_softmax(logits, dim=-1).cpu()  # (n_needed, vocab)
        cursor = 0
        for i, row in zip(idx, rows, strict=True):
            end_of_prompt = logp[cursor]
            cursor += 1
            branches = []
            for b_start, b_end in row.branches:
                tokens = row.ids[b_start:b_end]
                states = [end_of_prompt] + [logp[cursor + k] for k in range(b_end - b_start - 1)]
                cursor += b_end - b_start - 1
                branches.append(tuple(float(s[t]) for s, t in zip(states, tokens, strict=True)))
            best = torch.topk(end_of_prompt, 2)
            out[i] = PromptScores(
                logprobs=tuple(branches),
                top1=int(best.indices[0]),
                next_logprobs=end_of_prompt.clone() if keep[i] else None,
                top=(float(best.values[0]), float(best.values[1])),
            )
    return [s for s in out if s is not None]


def next_token_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
    """Each prompt's next-token log-distribution, (prompts × vocab) in float32, read in
    :func:`score_continuations`' batches."""
    import torch

    scores = score_continuations(model, tokenizer, prompts, [[] for _ in prompts], batch_size=batch_size,
                                 next_distribution=True)
    rows = []
    for score in scores:
        assert score.next_logprobs is not None  # asked for every prompt
        rows.append(score.next_logprobs.float())
    return torch.stack(rows)


def kl_terms(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) in nats per row of two (..., vocab) log-distributions (differentiable)."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def kl_divergence(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    """KL(P ‖ Q) in nats from two log-distributions over the vocabulary."""
    return float(kl_terms(p_log, q_log).sum().clamp_min(0.0))


def perplexity(model: Any, tokenizer: Any, text: str, *, window: int = 256, batch_size: int = 8) -> float:
    """Perplexity of ``text`` read in non-overlapping windows of ``window`` tokens."""
    import torch

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
        padded = pad(batch, 0, device)
        with torch.no_grad():
            logits = model(input_ids=padded.ids, attention_mask=padded.mask, use_cache=False).logits
        nll = _shifted_nll(logits.float(), padded.ids, padded.mask)
        total_nll += float(nll.sum())
        total_tokens += int(padded.mask[:, 1:].sum())
    return math.exp(total_nll / total_tokens)


def _shifted_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import torch

    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (batch, seq-1, vocab)
    nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    return nll * mask[:, 1:]
