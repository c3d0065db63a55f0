"""``cathrepo bench stack``: a saved sequential run's stack measured as it is and restrained.

A ``cathrepo bench edits --sequential --state DIR`` run saves its edits' deltas in order. This reads
them back (the same options as that run, checked against the saved key), takes the first N edits for
each ``--at N``, and measures that stack twice on the same records: summed exactly, and with each
module's summed update restrained at the base weight's spectral norm (:mod:`cathrepo.merging.restrain`,
PRUNE's remedy for sequential editing). Each measurement is the sequential benchmark's: ES, PS, NS, NS+,
free generation (plain and WILD-style) of the edited records, retention of known facts, the largest
norm growth and the held-out perplexity. ``every`` scores every k-th edited record only (retention and
perplexity are always whole), since scoring is most of the cost and the stack is what is compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cathrepo.bench.edits import EditBenchConfig, _facts
from cathrepo.bench.scoring import score_records, summarize
from cathrepo.bench.sequential import Progress, measure_stack
from cathrepo.exceptions import InvalidInputError


@dataclass(frozen=True)
class StackBenchConfig:
    """What ``cathrepo bench stack`` measures.

    Attributes:
        run: the options of the sequential run whose ``state`` is read (they decide its saved key).
        at: stack sizes to measure, in edited facts (each a whole number of the run's batches).
        rules: restraints to measure beside the stack as it is (``clip``, ``prune``).
        factor: the restraint's bound as a multiple of the base weight's spectral norm.
        every: score every k-th edited record.
    """

    run: EditBenchConfig
    at: Sequence[int]
    rules: Sequence[str] = ("clip",)
    factor: float = 1.0
    every: int = 1

    def __post_init__(self) -> None:
        if self.run.state is None or not self.at or self.every < 1:
            raise InvalidInputError("bench stack needs the run's --state, at least one --at N and --every >= 1.")
        if any(n <= 0 or n % self.run.edit_batch for n in self.at):
            raise InvalidInputError(f"Each --at must be a positive multiple of the run's --batch-size "
                                    f"{self.run.edit_batch}, not {sorted(self.at)}.")


def bench_stack(config: StackBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """One row per stack size: the records measured, the stack as it is and under each restraint."""
    from cathrepo.bench.resume import RunState, setup_key
    from cathrepo.facts.probes import build_probes, known_by_model, load_known_facts
    from cathrepo.merging.consolidate import consolidate
    from cathrepo.merging.restrain import restrain, spectral_norm
    from cathrepo.models import get_module, load_model, resolve_model, weights_sha256

    say = progress or (lambda stage, done, total: None)
    run = config.run
    state = RunState.load(run.state, setup_key(run))
    if max(config.at) > state.done:
        raise InvalidInputError(f"'{run.state}' holds {state.done} edits; --at {max(config.at)} needs more.",
                                hint="Measure at most as many as the run saved, or resume the run first.")
    resolved = resolve_model(run.model)
    model, tokenizer = load_model(resolved.path)
    base_hash = weights_sha256(resolved.path)
    picked = list(range(0, max(config.at), config.every))
    facts = _facts(run)
    known = known_by_model(model, tokenizer, load_known_facts(run.known) if run.known else load_known_facts(),
                           batch_size=run.batch_size)
    probesets = []
    for k, i in enumerate(picked):
        say("probes", k, len(picked))
        probesets.append(build_probes(facts[i], model, tokenizer, known, n_paraphrases=run.n_paraphrases,
                                      n_neighbors=run.n_neighbors, check_known=False))
    base_scores, base_dists = score_records(model, tokenizer, probesets, generation_tokens=run.generation_tokens,
                                            batch_size=run.batch_size)
    rows = []
    for n in sorted(config.at):
        size = sum(1 for i in picked if i < n)
        stack = consolidate(state.deltas[: n // run.edit_batch], "cat").delta  # exact: the same sum
        norms = {m: spectral_norm(get_module(model, m).weight) for m in stack.modules}
        _, raw = measure_stack(model, tokenizer, [stack], probesets[:size], base_dists[:size], run, base_hash, say,
                               mmlu=False)
        row: dict[str, Any] = {"edits": n, "records": size, "unedited": summarize(base_scores[:size]), "stack": raw}
        for rule in config.rules:
            held = restrain(stack, norms, rule, config.factor)
            _, got = measure_stack(model, tokenizer, [held.delta], probesets[:size], base_dists[:size], run,
                                   base_hash, say, mmlu=False)
            row[rule] = {**got, "bound": dict(held.bound), "top": dict(held.top), "above": dict(held.above),
                         "change": dict(held.change)}
        rows.append(row)
    return {"method": run.method, "state": str(run.state), "every": config.every, "factor": config.factor,
            "rows": rows}
