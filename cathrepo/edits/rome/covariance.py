"""Second-moment statistics of an MLP projection's keys, ``C = E[k kᵀ]`` (ROME §3.1, eq. 2).

ROME writes ``ΔW = Λ (C⁻¹ k*)ᵀ``: the update direction is whitened by the covariance of the keys the
layer normally sees, so other inputs are disturbed as little as possible. ``C`` is computed once from a
text corpus and cached, keyed by the base model's hash, the module and the corpus hash (the statistics
depend on all three). The default corpus is text sampled from the embedded model (``cathrepo/data``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import InvalidInputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_CORPUS = "smollm2-samples.txt"
MAX_SEQ = 256


def read_corpus(path: Path | None) -> tuple[list[str], str, str]:
    """(non-empty lines, sha256 of the bytes, a display name) of the corpus file or the shipped default."""
    if path is None:
        data = resources.files("cathrepo.data").joinpath("corpus", DEFAULT_CORPUS).read_bytes()
        name = f"cathrepo:{DEFAULT_CORPUS}"
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidInputError(f"Cannot read the corpus '{path}': {exc.strerror}.") from None
        name = str(path)
    try:
        lines = [ln.strip() for ln in data.decode("utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise InvalidInputError(f"The corpus '{name}' is not UTF-8 text.") from None
    if not lines:
        raise InvalidInputError(f"The corpus '{name}' holds no text.", hint="Pass a text file to --corpus.")
    return lines, hashlib.sha256(data).hexdigest(), name


def stats_dir(cache: Path, base_hash: str) -> Path:
    return cache / "stats" / base_hash[:16]


def key_covariance(
    model: Any,
    tokenizer: Any,
    module: str,
    *,
    corpus: Path | None,
    max_tokens: int,
    cache: Path,
    base_hash: str,
    also: Sequence[str] = (),
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``E[k kᵀ]`` of the inputs of ``module`` over up to ``max_tokens`` corpus tokens, cached.

    When the statistics must be computed, those of the ``also`` modules that are missing are computed in
    the same pass over the corpus (the layers a retry may move to cost one pass, not one each).
    Returns the (in, in) float32 matrix and a provenance dict (corpus name and hash, tokens, path).
    """
    from safetensors.torch import load_file

    lines, corpus_hash, corpus_name = read_corpus(corpus)

    def path(name: str) -> Path:
        return stats_dir(cache, base_hash) / name / f"cov-{corpus_hash[:16]}-{max_tokens}.safetensors"

    info = {"corpus": corpus_name, "corpus_sha256": corpus_hash, "max_tokens": max_tokens}
    if path(module).is_file():
        stored = load_file(str(path(module)))
        return stored["mom2"], {**info, "tokens": int(stored["count"].item()), "cached": True}
    todo = [module, *(m for m in also if m != module and not path(m).is_file())]
    log.info("Computing key statistics of %s over %d corpus tokens (once)...", ", ".join(todo), max_tokens)
    moments, count = _accumulate(model, tokenizer, todo, lines, max_tokens)
    for name, mom2 in moments.items():
        _store(path(name), mom2, count)
    return moments[module], {**info, "tokens": count, "cached": False}


def _store(path: Path, mom2: torch.Tensor, count: int) -> None:
    import torch
    from safetensors.torch import save

    from cathrepo.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save({"mom2": mom2.contiguous(), "count": torch.tensor([count])}))


def _accumulate(model: Any, tokenizer: Any, modules: Sequence[str], lines: list[str],
                max_tokens: int) -> tuple[dict[str, Any], int]:
    """Second moments of every module's inputs in one pass over the corpus (float64 sums)."""
    import torch

    from cathrepo.lm.hooks import capture, forward_until
    from cathrepo.models import model_device

    device = model_device(model)
    totals: dict[str, torch.Tensor] = {}
    count = 0
    batch: list[str] = []
    deepest = max(modules, key=_depth)
    for i, line in enumerate(lines):
        batch.append(line)
        if len(batch) < 8 and i < len(lines) - 1:
            continue
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=MAX_SEQ)
        enc = enc.to(device)
        batch = []
        keep = enc["attention_mask"].bool()
        with torch.no_grad(), capture(model, [m for m in modules if m != deepest], inputs=True, outputs=False) as seen:
            last = forward_until(model, deepest, inputs=True, **enc)  # (batch, seq, d_in)
        for name in modules:
            keys = (last if name == deepest else seen.inputs[name])[keep].double()  # (tokens, d_in)
            totals[name] = keys.T @ keys if name not in totals else totals[name] + keys.T @ keys
        count += int(keep.sum())
        if count >= max_tokens:
            break
    return {name: (total / count).float().cpu() for name, total in totals.items()}, count


def _depth(name: str) -> tuple[int, ...]:
    """Order module names by the layer numbers in them (a later layer runs later)."""
    return tuple(int(part) for part in name.split(".") if part.isdigit())
