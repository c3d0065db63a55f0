"""Token positions of a subject inside a prompt (the lookup index of ROME, tracing and patching)."""

from __future__ import annotations

from typing import Any

from cathrepo.exceptions import InvalidInputError


def subject_token_span(tokenizer: Any, prompt: str, subject: str) -> tuple[int, int]:
    """[start, end) token indices of the last occurrence of ``subject`` in the tokenized ``prompt``.

    Uses the fast tokenizer's character offsets, so it works for any tokenizer family (BPE with or
    without a leading-space marker, SentencePiece) and with special tokens such as ``<bos>``.
    """
    at = prompt.rfind(subject)
    if at < 0:
        raise InvalidInputError(f"The subject '{subject}' does not occur in '{prompt}'.")
    char_start, char_end = at, at + len(subject)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    tokens = [
        i
        for i, (s, e) in enumerate(enc["offset_mapping"])
        if e > s and s < char_end and e > char_start
    ]
    if not tokens:
        raise InvalidInputError(f"The subject '{subject}' covers no token of '{prompt}'.")
    return tokens[0], tokens[-1] + 1


def subject_last_index(tokenizer: Any, prompt: str, subject: str) -> int:
    """Index of the subject's last token (ROME's ``subject_last`` lookup)."""
    return subject_token_span(tokenizer, prompt, subject)[1] - 1
