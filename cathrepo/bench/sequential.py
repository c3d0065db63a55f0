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
    """Edit ``facts`` batch by batch on one model, measuring at the checkpoints and the end; the
    records' scores, the seconds per fact and the end's stack measures. With ``config.restrain`` the
    model carries the stack restrained after every edit (:class:`Carried`), and the next edit is
    computed on that."""
    import dataclasses

    from cathrepo.bench.resume import RunState, setup_key
    from cathrepo.pipeline import kept_prompts

    state = RunState.load(config.state, setup_key(config))  # a cut run goes on where it was saved
    deltas, seconds, sizes = state.deltas, state.seconds, state.sizes
    for point in state.checkpoints:
        measured(point)
    points = sorted({n for n in config.checkpoints if state.done < n < len(facts)})
    carried = Carried(model, config.restrain, config.restrain_factor)
    try:
        carried.put(deltas)
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
            carried.add(deltas)
            done = start + len(batch)
            every = config.save_every
            if every and done < len(facts) and done // every > start // every and not (points and done >= points[0]):
                state.done = done  # saved unmeasured: a cut run loses at most `every` edits
                state.save(config.state)
            if points and done >= points[0]:
                while points and done >= points[0]:
                    points.pop(0)
                stack = carried.stack(deltas)
                carried.take_off()  # measured from the base weights, as at the end
                _, extra = measure_stack(model, tokenizer, stack, probesets[:done], base_dists[:done], config,
                                         base_hash, say, mmlu=False)
                point = {"edits": done, "seconds_per_edit": statistics.median(seconds), **extra}
                measured(point)
                state.done = done
                state.checkpoints.append(point)
                state.save(config.state)
                carried.put(deltas)  # the same additions in the same order: the same weights
        stack = carried.stack(deltas)
    finally:
        carried.take_off()  # back to the base weights, bit for bit
    say("edits", len(facts), len(facts))
    scores, extra = measure_stack(model, tokenizer, stack, probesets, base_dists, config, base_hash, say,
                                  mmlu=config.mmlu)
    measured({"edits": len(facts), "seconds_per_edit": statistics.median(seconds), **extra})
    scores = [{**s, "adapter_bytes": n} for s, n in zip(scores, sizes, strict=True)]
    extra = {k: v for k, v in extra.items() if k not in HEADLINE}
    return scores, seconds, extra


class Carried:
    """The stack a sequential run's model carries: every edit as it is, or (with ``rule``) the stack
    summed and restrained at ``factor`` times each base weight's spectral norm
    (:mod:`cathrepo.merging.restrain`), recomputed from the whole stack after every edit, so each new
    edit is computed on the restrained model."""

    def __init__(self, model: Any, rule: str | None, factor: float = 1.0) -> None:
        from cathrepo.delta import AppliedDelta

        self.model, self.rule, self.factor = model, rule, factor
        self.undo = AppliedDelta()

    def stack(self, deltas: Sequence[Any]) -> list[Any]:
        """What the model carries for ``deltas``: the deltas, or one restrained delta."""
        from cathrepo.merging.consolidate import consolidate
        from cathrepo.merging.restrain import spectral_norm
        from cathrepo.models import get_module

        if not self.rule or not deltas:
            return list(deltas)
        modules = {m for d in deltas for m in d.modules}
        norms = {m: spectral_norm(self.undo.originals.get(m, get_module(self.model, m).weight)) for m in modules}
        return [consolidate(deltas, f"{self.rule}:{self.factor}", norms=norms).delta]  # summed and restrained

    def put(self, deltas: Sequence[Any]) -> None:
        """Apply the stack of ``deltas`` to the model at its base weights."""
        for delta in self.stack(deltas):
            self._apply(delta)

    def add(self, deltas: Sequence[Any]) -> None:
        """The last of ``deltas`` was just computed: carry it (as it is, or the stack restrained again)."""
        if self.rule:
            stack = self.stack(deltas)  # the base norms are read before the weights go back
            self.take_off()
            for delta in stack:
                self._apply(delta)
        elif deltas:
            self._apply(deltas[-1])

    def _apply(self, delta: Any) -> None:
        from cathrepo.delta import apply_delta

        for name, original in apply_delta(self.model, delta).originals.items():
            self.undo.originals.setdefault(name, original)

    def take_off(self) -> None:
        """Back to the base weights, bit for bit."""
        self.undo.remove(self.model)


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
