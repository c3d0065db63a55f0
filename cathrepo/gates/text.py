"""What the gates read in generated text: whether an answer occurs, and how repetitive the text is.

Fluency is ROME's weighted bi-/tri-gram entropy of generated text (Meng et al. 2022, appendix): a
degenerate model that repeats itself scores low.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+|[^\w\s]")


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
