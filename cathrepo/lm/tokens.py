"""Token ids in and out: targets as continuations, subjects as token spans, sequences padded into batches.

A target is tokenized as a continuation (``" " + target`` after the prompt), the way it follows a prompt
in running text. A subject is located by the fast tokenizer's character offsets, so the lookup works for
any tokenizer family (BPE with or without a leading-space marker, SentencePiece) and with special tokens
such as ``<bos>``.

Right padding (the default) keeps every row's positions equal to those of its unpadded run, which is
what teacher-forced scoring and training read. Left padding puts every row's last token in the last
column, which is what a decoder with a KV cache appends to; its callers pass position ids that count
real tokens only.
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


def first_token_id(tokenizer: Any, target: str) -> int:
    """The first token of ``target`` as a continuation: what "the model gives the answer" checks, and
    the token whose probability causal tracing and patching measure."""
    return continuation_ids(tokenizer, target)[0]


def encode(tokenizer: Any, prompt: str, target: str) -> Encoded:
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    return Encoded(prompt_ids + continuation_ids(tokenizer, target), len(prompt_ids))


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before any text (a BOS token for Llama/Gemma, nothing for GPT-2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def subject_token_span(tokenizer: Any, prompt: str, subject: str) -> tuple[int, int]:
    """[start, end) of the tokens of ``tokenizer(prompt)`` that overlap the *last* ``subject`` in it.

    The last occurrence, because the subject a next-token prediction is about is the one in the final
    clause: a teacher prompt states the fact before asking it, CounterFact+ prepends the edit's own
    prompt to a neighbour's, ROME's context templates put generated text before the prompt, and in each
    the subject the answer follows is the last one. A prompt with one occurrence is unaffected.
    """
    at = prompt.rfind(subject)
    if at < 0 or not subject:
        raise InvalidInputError(
            f"The subject '{subject}' does not occur in the prompt '{prompt}'.",
            hint="Pass a subject that the prompt contains verbatim.",
        )
    char_start, char_end = at, at + len(subject)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    tokens = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < char_end and e > char_start]
    if not tokens:
        raise InvalidInputError(f"The subject '{subject}' covers no token of '{prompt}'.")
    return tokens[0], tokens[-1] + 1


def subject_last_index(tokenizer: Any, prompt: str, subject: str) -> int:
    """Index of the subject's last token (ROME's ``subject_last`` lookup)."""
    return subject_token_span(tokenizer, prompt, subject)[1] - 1


@dataclass
class Batch:
    """Padded token ids and their attention mask, both (rows, seq)."""

    ids: torch.Tensor
    mask: torch.Tensor


def pad_id(tokenizer: Any) -> int:
    """The id padding is filled with: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad or 0)


def pad(seqs: Sequence[Sequence[int]], fill: int, device: Any = None, *, left: bool = False) -> Batch:
    """``seqs`` as one (rows, longest) batch padded with ``fill``, on ``device``."""
    import torch

    if not seqs:
        raise ValueError("nothing to pad")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(list(s), dtype=torch.long)
        mask[i, cols] = 1
    return Batch(ids.to(device), mask.to(device)) if device is not None else Batch(ids, mask)


def user_turn(tokenizer: Any, text: str) -> str | None:
    """``text`` as a user's message in the tokenizer's chat template, up to where the assistant's answer
    begins; None when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    return str(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True))
