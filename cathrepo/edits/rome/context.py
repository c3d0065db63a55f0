"""Context prefixes for ROME's key and value (the r-ROME consistent average).

ROME averages the key vector over the prompt preceded by short texts the model itself generated, so
the edit fires whatever came before the subject. The original code averaged over prefixes for the key
``u`` but took the value's reference output from the bare prompt; Gupta et al. (2024, "Rebuilding ROME")
trace ROME's model-disabling edits to that inconsistency. Here the same prefixes serve both.

Prefixes are sampled once per base model and seed and cached beside the covariance statistics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cathrepo.files import atomic_write

log = logging.getLogger(__name__)

STARTERS = ("The", "Therefore", "Because", "I", "You", "In", "When", "After", "She", "It")


def sample_prefixes(model: Any, tokenizer: Any, n: int, tokens: int, seed: int) -> list[str]:
    """``n`` short texts sampled from the model, each ending with '. ' so a prompt can follow."""
    import torch

    from cathrepo.models import model_device

    if n == 0:
        return []
    starters = [STARTERS[i % len(STARTERS)] for i in range(n)]
    prefixes = []
    device = model_device(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for starter in starters:
            enc = tokenizer(starter, return_tensors="pt").to(device)
            out = model.generate(
                **enc,
                max_new_tokens=tokens,
                do_sample=True,
                top_k=5,
                pad_token_id=tokenizer.pad_token_id,
            )
            text = tokenizer.decode(out[0], skip_special_tokens=True)
            text = " ".join(text.replace("{", " ").replace("}", " ").split())
            prefixes.append(text.rstrip(".") + ". ")
    return prefixes


def context_prefixes(
    model: Any, tokenizer: Any, n: int, tokens: int, seed: int, cache: Path | None
) -> list[str]:
    """The bare prompt's empty prefix plus ``n`` sampled prefixes, cached in ``cache`` when given."""
    path = cache / f"prefixes-n{n}-t{tokens}-s{seed}.json" if cache else None
    if path is not None and path.is_file():
        return [""] + json.loads(path.read_text())
    prefixes = sample_prefixes(model, tokenizer, n, tokens, seed)
    if path is not None:
        atomic_write(path, (json.dumps(prefixes, indent=1) + "\n").encode(), make_parents=True)
    return [""] + prefixes
