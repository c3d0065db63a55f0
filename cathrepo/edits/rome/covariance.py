"""Second-moment statistics of an MLP projection's keys, ``C = E[k kᵀ]`` (ROME §3.1, eq. 2).

ROME writes ``ΔW = Λ (C⁻¹ k*)ᵀ``: the update direction is whitened by the covariance of the keys the
layer normally sees, so other inputs are disturbed as little as possible. ``C`` is computed once from a
text corpus and cached, keyed by the base model's hash, the module and the corpus hash (the statistics
depend on all three). The default corpus is text sampled from the embedded model (``cathrepo/data``).
"""

from __future__ import annotations

import hashlib
import logging
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
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``E[k kᵀ]`` of the inputs of ``module`` over up to ``max_tokens`` corpus tokens, cached.

    Returns the (in, in) float32 matrix and a provenance dict (corpus name and hash, tokens, path).
    """
    import torch
    from safetensors.torch import load_file, save_file

    lines, corpus_hash, corpus_name = read_corpus(corpus)
    path = stats_dir(cache, base_hash) / module / f"cov-{corpus_hash[:16]}-{max_tokens}.safetensors"
    info = {"corpus": corpus_name, "corpus_sha256": corpus_hash, "max_tokens": max_tokens}
    if path.is_file():
        stored = load_file(str(path))
        return stored["mom2"], {**info, "tokens": int(stored["count"].item()), "cached": True}
    log.info("Computing key statistics of %s over %d corpus tokens (once)...", module, max_tokens)
    mom2, count = _accumulate(model, tokenizer, module, lines, max_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"mom2": mom2, "count": torch.tensor([count])}, str(tmp))
    tmp.replace(path)
    return mom2, {**info, "tokens": count, "cached": False}


def _accumulate(model: Any, tokenizer: Any, module: str, lines: list[str], max_tokens: int) -> tuple[Any, int]:
    import torch

    from cathrepo.attribution.hooks import forward_until
    from cathrepo.models import model_device

    device = model_device(model)
    total: torch.Tensor | None = None
    count = 0
    batch: list[str] = []
    for i, line in enumerate(lines):
        batch.append(line)
        if len(batch) < 8 and i < len(lines) - 1:
            continue
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=MAX_SEQ)
        enc = enc.to(device)
        batch = []
        with torch.no_grad():
            keys = forward_until(model, module, inputs=True, **enc)  # (batch, seq, d_in)
        keys = keys[enc["attention_mask"].bool()].double()  # (tokens, d_in)
        total = keys.T @ keys if total is None else total + keys.T @ keys
        count += keys.shape[0]
        if count >= max_tokens:
            break
    assert total is not None
    return (total / count).float().cpu(), count
