"""The pack benchmark behind ``cathrepo bench packs``: how much an ``svd:R`` pack changes the model
against the exact ``cat`` pack of the same edits.

N CounterFact records are edited one after another on one model (each computed on the earlier ones, as
a repository would: ``bench edits --sequential``), then folded into packs. Each pack is applied alone
to the base model and compared with ``cat`` on held-out text (the perplexity gate's, windows of 256
tokens): the mean next-token KL(cat ‖ pack), the largest logit difference, the share of positions whose
top token agrees; and on the edits themselves: efficacy (the new target preferred on the rewrite prompt)
and paraphrase success. ``cat`` is also checked against the deltas applied one by one (it must agree to
float rounding).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Progress = Callable[[str, int, int], None]
WINDOW = 256


@dataclass(frozen=True)
class PackBenchConfig:
    """What ``cathrepo bench packs`` runs.

    Attributes:
        data: CounterFact records; n, skip: the records edited (the first N after ``skip``).
        method: the edit method; edit_batch: facts per edit (MEMIT batches).
        ranks: the ``svd:R`` ranks compared with ``cat``.
        tokens: held-out tokens compared (the first ones of the shipped held-out text).
    """

    data: Path
    n: int = 50
    skip: int = 5000
    method: str = "rome"
    edit_batch: int = 1
    ranks: tuple[int, ...] = (1, 4, 16, 64)
    tokens: int = 1024
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _logprobs(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        out = [model(ids[:, i : i + WINDOW]).logits.float() for i in range(0, ids.shape[1], WINDOW)]
    return torch.cat(out, dim=1)[0]  # (tokens, vocab)


def compare(reference: Any, other: Any) -> dict[str, float]:
    """KL(reference ‖ other) per position (mean, max), the largest logit difference, top-1 agreement."""
    import torch

    p, q = torch.log_softmax(reference, -1), torch.log_softmax(other, -1)
    kl = (p.exp() * (p - q)).sum(-1)
    return {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "max_logit_diff": float((reference - other).abs().max()),
            "top1_agree": float((reference.argmax(-1) == other.argmax(-1)).float().mean())}


def _success(model: Any, tokenizer: Any, facts: Sequence[Any]) -> dict[str, float]:
    """ES on the rewrite prompts, PS on the records' paraphrases (new target preferred to the old)."""
    from cathrepo.lm.scoring import prefers

    def share(prompts: list[str], new: list[str], old: list[str]) -> float:
        scores = prefers(model, tokenizer, prompts, new, old) if prompts else []
        return sum(a > b for a, b in scores) / len(scores) if scores else float("nan")

    para = [(p, f) for f in facts for p in f.paraphrases]
    return {"es": share([f.prompt for f in facts], [f.target_new for f in facts], [f.target_true for f in facts]),
            "ps": share([p for p, _ in para], [f.target_new for _, f in para], [f.target_true for _, f in para])}


def _edits(model: Any, tokenizer: Any, facts: Sequence[Any], config: PackBenchConfig, base_hash: str,
           say: Progress) -> tuple[list[Any], float]:
    """The sequential edits' deltas (each computed with the earlier ones applied) and seconds per fact."""
    from cathrepo.delta import AppliedDelta, apply_delta
    from cathrepo.edits.base import EditEnv, get_method

    method = get_method(config.method)
    editor = method(method.params_for(model, dict(config.params)))
    env = EditEnv(base_hash=base_hash)
    deltas, undo, start = [], AppliedDelta(), time.perf_counter()
    try:
        for i in range(0, len(facts), config.edit_batch):
            say("edits", i, len(facts))
            delta = editor.compute(model, tokenizer, list(facts[i : i + config.edit_batch]), env).delta
            deltas.append(delta)
            for name, original in apply_delta(model, delta).originals.items():
                undo.originals.setdefault(name, original)
    finally:
        undo.remove(model)
    return deltas, (time.perf_counter() - start) / max(len(facts), 1)


def bench_packs(config: PackBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the cat row and one row per rank."""
    from cathrepo.delta import applied
    from cathrepo.facts.schema import load_facts
    from cathrepo.gates.perplexity import default_heldout_path
    from cathrepo.merging.consolidate import consolidate
    from cathrepo.models import load_model, resolve_model, weights_sha256

    say = progress or (lambda stage, done, total: None)
    resolved = resolve_model(config.model)
    model, tokenizer = load_model(resolved.path)
    facts = [f for f in load_facts(config.data, config.skip + config.n)[config.skip:] if f.target_true][: config.n]
    deltas, seconds = _edits(model, tokenizer, facts, config, weights_sha256(resolved.path), say)
    ids = tokenizer(default_heldout_path().read_text(encoding="utf-8"), return_tensors="pt").input_ids[:, : config.tokens]
    with applied(model, *deltas):
        one_by_one = _logprobs(model, ids)
    cat = consolidate(deltas, "cat")
    with applied(model, cat.delta):
        reference = _logprobs(model, ids)
        rows = [{"strategy": "cat", "rank": max(cat.ranks.values()), "bytes": cat.delta.num_bytes(),
                 "max_error": cat.max_error, **compare(one_by_one, reference), **_success(model, tokenizer, facts)}]
    for rank in config.ranks:
        say("packs", len(rows), len(config.ranks) + 1)
        pack = consolidate(deltas, f"svd:{rank}")
        with applied(model, pack.delta):
            rows.append({"strategy": pack.strategy, "rank": max(pack.ranks.values()), "bytes": pack.delta.num_bytes(),
                         "max_error": pack.max_error, **compare(reference, _logprobs(model, ids)),
                         **_success(model, tokenizer, facts)})
    return {"config": {**dataclasses.asdict(config), "data": str(config.data)}, "model": resolved.name,
            "facts": len(facts), "edits": len(deltas), "seconds_per_fact": seconds, "tokens": int(ids.shape[1]),
            "rows": rows}
