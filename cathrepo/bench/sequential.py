"""Sequential runs of ``cathrepo bench edits``: one model, every edit stacked on the ones before.

Each batch is computed on the model with the earlier edits applied and held off their keys (as a
repository would); at each checkpoint and at the end the stack is measured from the base weights
(:func:`measure_stack`): the records' scores, retention of known facts, the largest norm growth, the
held-out perplexity and, at the end, MMLU. ``--state`` saves the stack to resume a cut run
(:mod:`cathrepo.bench.resume`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from cathrepo.bench.scoring import HEADLINE, score_records, summarize
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.probes import ProbeSet
from cathrepo.facts.schema import Fact

Progress = Callable[[str, int, int], None]
#: Called with each checkpoint of a sequential run as it is measured (the metrics after that many edits).
Checkpoint = Callable[[dict[str, Any]], None]


def batches(facts: Sequence[Fact], size: int) -> list[tuple[int, list[Fact]]]:
    """(index of the first, the facts) of each consecutive batch of ``size`` facts."""
    if size <= 0:
        raise InvalidInputError(f"--batch-size {size} must be positive.")
    return [(i, list(facts[i : i + size])) for i in range(0, len(facts), size)]


def run_sequential(model: Any, tokenizer: Any, editor: Any, env: Any, facts: Sequence[Fact],
                probesets: Sequence[ProbeSet], base_dists: Sequence[list[Any]], config: Any,
                base_hash: str, say: Progress, measured: Checkpoint,
                ) -> tuple[list[dict[str, float]], list[float], dict[str, Any]]:
    import dataclasses

    from cathrepo.bench.resume import RunState, setup_key
    from cathrepo.delta import AppliedDelta, apply_delta
    from cathrepo.pipeline import kept_prompts

    state = RunState.load(config.state, setup_key(config))  # a cut run goes on where it was saved
    deltas, seconds, sizes = state.deltas, state.seconds, state.sizes
    for point in state.checkpoints:
        measured(point)
    points = sorted({n for n in config.checkpoints if state.done < n < len(facts)})
    undo = AppliedDelta()
    try:
        for delta in deltas:
            for name, original in apply_delta(model, delta).originals.items():
                undo.originals.setdefault(name, original)
        for start, batch in batches(facts, config.edit_batch):
            if start < state.done:
                continue
            say("edits", start, len(facts))
            t0 = time.perf_counter()
            # as a repository would: the earlier edits' prompts are what the new update is held off
            relation = probesets[start].relation_id if len(batch) == 1 else None
            kept = kept_prompts(probesets[:start], relation)
            result = editor.compute(model, tokenizer, batch, dataclasses.replace(env, kept=kept))
            seconds.extend([(time.perf_counter() - t0) / len(batch)] * len(batch))
            deltas.append(result.delta)
            sizes.extend([result.delta.num_bytes() / len(batch)] * len(batch))
            for name, original in apply_delta(model, result.delta).originals.items():
                undo.originals.setdefault(name, original)
            done = start + len(batch)
            every = config.save_every
            if every and done < len(facts) and done // every > start // every and not (points and done >= points[0]):
                state.done = done  # saved unmeasured: a cut run loses at most `every` edits
                state.save(config.state)
            if points and done >= points[0]:
                while points and done >= points[0]:
                    points.pop(0)
                undo.remove(model)  # measured from the base weights, as at the end
                _, extra = measure_stack(model, tokenizer, deltas, probesets[:done], base_dists[:done], config,
                                    base_hash, say, mmlu=False)
                point = {"edits": done, "seconds_per_edit": statistics.median(seconds), **extra}
                measured(point)
                state.done = done
                state.checkpoints.append(point)
                state.save(config.state)
                for delta in deltas:  # the same additions in the same order: the same weights
                    for name, original in apply_delta(model, delta).originals.items():
                        undo.originals.setdefault(name, original)
    finally:
        undo.remove(model)  # back to the base weights, bit for bit
    say("edits", len(facts), len(facts))
    scores, extra = measure_stack(model, tokenizer, deltas, probesets, base_dists, config, base_hash, say,
                             mmlu=config.mmlu)
    measured({"edits": len(facts), "seconds_per_edit": statistics.median(seconds), **extra})
    scores = [{**s, "adapter_bytes": n} for s, n in zip(scores, sizes, strict=True)]
    extra = {k: v for k, v in extra.items() if k not in HEADLINE}
    return scores, seconds, extra


def measure_stack(model: Any, tokenizer: Any, deltas: Sequence[Any], probesets: Sequence[ProbeSet],
             base_dists: Sequence[list[Any]], config: Any, base_hash: str,
             say: Progress, *, mmlu: bool) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """The records' scores with ``deltas`` stacked on the base weights, and their summary with the
    stack's retention, norm growth, perplexity (and with ``mmlu``, MMLU) before and after."""
    from cathrepo.delta import applied
    from cathrepo.gates.base import run_gates
    from cathrepo.gates.policy import GatePolicy

    say("scoring", 0, len(probesets))
    with applied(model, *deltas):
        scores, _ = score_records(model, tokenizer, probesets, base_dists=base_dists,
                                  generation_tokens=config.generation_tokens, batch_size=config.batch_size)
    say("retention and mmlu", 0, 1)
    policy = GatePolicy(retention_data=str(config.known or ""), retention_sample=config.retention_sample,
                        retention_known_only=config.retention_known_only,
                        mmlu_data=str(config.mmlu_data or ""), mmlu_limit=config.mmlu_limit,
                        batch_size=config.batch_size)
    gates = ["retention", "norms", "perplexity"] + (["mmlu"] if mmlu else [])
    report = run_gates(model, tokenizer, before=[], after=deltas, policy=policy, stage="promote", gates=gates,
                       base_hash=base_hash)
    extra: dict[str, Any] = {**summarize(scores),
                             "retention": report["retention"].metrics.get("retention"),
                             "norm_growth": report["norms"].metrics.get("max_growth"),
                             "perplexity_before": report["perplexity"].metrics.get("ppl_before"),
                             "perplexity_after": report["perplexity"].metrics.get("ppl")}
    if mmlu:
        extra.update({"mmlu_before": report["mmlu"].metrics["mmlu_base"], "mmlu_after": report["mmlu"].metrics["mmlu"],
                      "mmlu_n": report["mmlu"].metrics["n"]})
    return scores, extra
