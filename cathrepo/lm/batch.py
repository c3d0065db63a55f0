"""Padding token-id sequences into one batch: the one place rows are laid side by side.

Right padding (the default) keeps every row's positions equal to those of its unpadded run, which is
what teacher-forced scoring and training read. Left padding puts every row's last token in the last
column, which is what a decoder with a KV cache appends to; its callers pass position ids that count
real tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


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
