"""Scoring edited records in the model's current state: ES, PS, NS, NS+, NKL and free generation.

Used by ``cathrepo bench edits`` (each edit, or a sequential stack at its checkpoints and end) and by
``cathrepo bench stack``; every record's probes are batched together.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from cathrepo.facts.probes import Probe, ProbeSet, stated

HEADLINE = ("es", "ps", "ns", "s", "ns_plus", "nkl", "gen_success", "gen_chat", "ps_template", "ns_mined", "em", "pm", "nm")


#: Tokens the chat-template answer may take (WILD-style: the model answers as it would a user).
CHAT_TOKENS = 24


def chat_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """Each prompt as a user's request in the model's chat template, ready for the assistant's answer
    (WILD-style free generation: no teacher forcing, the question asked as a user would); none when the
    tokenizer has no chat template."""
    from cathrepo.lm.tokens import user_turn

    turns = [user_turn(tokenizer, f"Complete this sentence: {p}") for p in prompts]
    return [t for t in turns if t is not None]


def score_records(
    model: Any, tokenizer: Any, probesets: Sequence[ProbeSet], *, base_dists: Sequence[list[Any]] | None = None,
    generation_tokens: int = 12, batch_size: int = 64,
) -> tuple[list[dict[str, float]], list[list[Any]]]:
    """Per-record scores in the model's current state, all records batched together.

    Returns the scores and, per record, the next-token distributions after its neighbour prompts (kept
    in float16 to bound memory; NKL against ``base_dists`` when those are given).
    """
    from cathrepo.gates.generation import contains_answer
    from cathrepo.gates.probing import magnitude, rate, score_probes
    from cathrepo.lm.decoding import greedy_continuations
    from cathrepo.lm.scoring import kl_divergence

    flat: list[tuple[int, str, Probe]] = []
    for i, ps in enumerate(probesets):
        rewrite = ps.of_kind("rewrite")
        for p in ps.of_kind("rewrite", "paraphrase", "neighborhood"):
            flat.append((i, p.kind, p))
        for p in ps.of_kind("neighborhood") if rewrite else ():
            if p.source == "record":
                flat.append((i, "plus", p.after(stated(rewrite[0].prompt, rewrite[0].target))))
    outcomes = score_probes(model, tokenizer, [p for _, _, p in flat], batch_size=batch_size,
                            next_distribution=("neighborhood",))
    gen_probes = [(i, p) for i, ps in enumerate(probesets) for p in ps.of_kind("rewrite", "paraphrase")
                  if p.source == "record"]
    texts = greedy_continuations(model, tokenizer, [p.prompt for _, p in gen_probes],
                                 max_new_tokens=generation_tokens, batch_size=batch_size)
    chats = chat_prompts(tokenizer, [p.prompt for _, p in gen_probes])
    answers = greedy_continuations(model, tokenizer, chats, max_new_tokens=CHAT_TOKENS,
                                   batch_size=batch_size) if chats else []
    rows: list[dict[str, list[Any]]] = [{} for _ in probesets]
    dists: list[list[Any]] = [[] for _ in probesets]
    for (i, kind, probe), o in zip(flat, outcomes, strict=True):
        key = {"rewrite": "es", "paraphrase": "ps", "neighborhood": "ns", "plus": "ns_plus"}[kind]
        if probe.source != "record" and kind in ("paraphrase", "neighborhood"):
            key = "ps_template" if kind == "paraphrase" else "ns_mined"
        rows[i].setdefault(key, []).append(o)
        if kind == "neighborhood" and o.next_logprobs is not None:
            dists[i].append(o.next_logprobs.half())
    for (i, p), text in zip(gen_probes, texts, strict=True):
        rows[i].setdefault("gen", []).append(contains_answer(text, p.target))
    for (i, p), text in zip(gen_probes, answers, strict=bool(answers)):
        rows[i].setdefault("chat", []).append(contains_answer(text, p.target))
    scores = []
    for i, row in enumerate(rows):
        s: dict[str, float] = {}
        for key in ("es", "ps", "ns", "ns_plus", "ps_template", "ns_mined"):
            if row.get(key):
                s[key] = rate(row[key])
        for key, mag in (("es", "em"), ("ps", "pm"), ("ns", "nm")):
            if row.get(key):
                s[mag] = magnitude(row[key])
        if row.get("gen"):
            s["gen_success"] = sum(row["gen"]) / len(row["gen"])
        if row.get("chat"):
            s["gen_chat"] = sum(row["chat"]) / len(row["chat"])
        if base_dists is not None and dists[i]:
            kls = [kl_divergence(b.float(), a.float()) for b, a in zip(base_dists[i], dists[i], strict=True)]
            s["nkl"] = sum(kls) / len(kls)
        scores.append(s)
    return scores, dists


def summarize(scores: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    """Mean of each metric over the records that have it; ``s`` = harmonic mean of ES, PS and NS."""
    out: dict[str, float | None] = {}
    for key in HEADLINE:
        values = [s[key] for s in scores if key in s]
        out[key] = sum(values) / len(values) if values else None
    parts = [out["es"], out["ps"], out["ns"]]
    out["s"] = statistics.harmonic_mean(parts) if all(p is not None and p > 0 for p in parts) else 0.0  # type: ignore[arg-type]
    return out


# --- the driver --------------------------------------------------------------------------------------------
