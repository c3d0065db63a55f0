"""The edit benchmark behind ``cathrepo bench edits``: CounterFact/zsRE scores of an edit method.

Without ``sequential`` every record edits a fresh copy of the model (the delta is applied, scored and
removed, which restores the weights bit for bit). With ``sequential`` all N edits go into one model one
after another, each computed on the model holding the earlier ones (as a repository would), and every
edit is scored at the end, with retention and MMLU before and after.

Headline metrics use each record's own prompts, as the literature does (Meng et al. 2022): ES on the
rewrite prompt, PS on the record's paraphrases, NS on its neighbourhood prompts, NS+ and NKL from
CounterFact+ (Hoelscher-Obermaier et al. 2023), and free-generation success on the rewrite prompt and
paraphrases. The template paraphrases and mined neighbours cathrepo adds are reported beside them
(``ps_template``, ``ns_mined``). The unedited model is scored on the same records.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cathrepo.bench.scoring import score_records, summarize
from cathrepo.bench.sequential import Checkpoint, Progress, batches, run_sequential
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.probes import ProbeSet, build_probes, known_by_model, load_known_facts
from cathrepo.facts.schema import Fact, load_facts

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class EditBenchConfig:
    """What ``cathrepo bench edits`` runs.

    Attributes:
        data: CounterFact (flat or ROME layout) or zsRE records.
        n: records to edit (the first N after ``skip``, keeping only records with a true target).
        method: edit method name ("rome", ...) or "none" for the unedited model alone.
        sequential: edit one model N times, then score all edits, retention and MMLU.
        model: model source (None: the embedded default).
        params: overrides of the method's parameters.
        corpus: text for the method's statistics (None: the method's default).
        known: known-facts file for neighbour mining and retention (None: the shipped copy).
        mmlu_data, mmlu_limit: MMLU directory and questions per subject (sequential runs only).
        checkpoints: in sequential runs, also score the records edited so far (with retention and
            perplexity; MMLU only at the end) once this many edits are in; the end is always one.
        state: in sequential runs, a directory the stack is saved to at each checkpoint, and resumed
            from when the run starts again (:mod:`cathrepo.bench.resume`).
        save_every: with ``state``, also save the stack (unmeasured) each time this many more facts are
            edited, so a cut long run loses at most that many edits (0: only at checkpoints).
        restrain, restrain_factor: in sequential runs, carry the stack restrained after every edit
            (``clip`` or ``prune`` at ``restrain_factor`` times each base weight's spectral norm,
            :mod:`cathrepo.merging.restrain`), so each edit is computed and measured on that; None: as it is.
    """

    data: Path
    n: int = 100
    method: str = "rome"
    sequential: bool = False
    edit_batch: int = 1
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    corpus: Path | None = None
    skip: int = 0
    known: Path | None = None
    n_paraphrases: int = 3
    n_neighbors: int = 3
    generation_tokens: int = 12
    retention_sample: int = 500
    retention_known_only: bool = True
    mmlu: bool = True
    mmlu_data: Path | None = None
    mmlu_limit: int = 0
    batch_size: int = 128
    checkpoints: tuple[int, ...] = ()
    state: Path | None = None
    save_every: int = 0
    restrain: str | None = None
    restrain_factor: float = 1.0


@dataclass
class EditBenchResult:
    """The numbers ``cathrepo bench edits`` prints and writes."""

    config: EditBenchConfig
    model: str
    metrics: dict[str, float | None]
    unedited: dict[str, float | None]
    per_record: list[dict[str, Any]]
    edit_seconds: list[float]
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()}
        cfg["params"] = dict(self.config.params)
        return {
            "n": len(self.per_record), "method": self.config.method, "model": self.model,
            "sequential": self.config.sequential, **self.metrics, "unedited": self.unedited,
            "config": cfg, "edit_seconds": [round(s, 4) for s in self.edit_seconds], "checkpoints": self.checkpoints,
            "records": self.per_record,
        }


def _facts(config: EditBenchConfig) -> list[Fact]:
    facts = [f for f in load_facts(config.data) if f.target_true][config.skip :]
    if not facts:
        raise InvalidInputError(f"No record in '{config.data}' has a true target to compare against.",
                                hint="CounterFact and zsRE records carry one; plain records need target_true.")
    return facts[: config.n]


def bench_edits(config: EditBenchConfig, progress: Progress | None = None,
                on_checkpoint: Checkpoint | None = None) -> EditBenchResult:
    """Run the benchmark and return its numbers; ``progress(stage, done, total)`` reports advance and
    ``on_checkpoint`` gets each checkpoint of a sequential run as soon as it is measured."""
    from cathrepo.edits.base import EditEnv, get_method
    from cathrepo.models import load_model, resolve_model, weights_sha256

    say = progress or (lambda stage, done, total: None)
    resolved = resolve_model(config.model)
    model, tokenizer = load_model(resolved.path)
    base_hash = weights_sha256(resolved.path)
    facts = _facts(config)
    # 1. probes: mined prompts only from known facts the unedited model answers (checked once, batched)
    say("probes", 0, len(facts))
    known = known_by_model(model, tokenizer, load_known_facts(config.known) if config.known else load_known_facts(),
                           batch_size=config.batch_size)
    probesets = []
    for i, fact in enumerate(facts):
        say("probes", i, len(facts))
        probesets.append(build_probes(fact, model, tokenizer, known, n_paraphrases=config.n_paraphrases,
                                      n_neighbors=config.n_neighbors, check_known=False))
    # 2. the unedited model on the same records
    say("unedited", 0, 1)
    base_scores, base_dists = score_records(model, tokenizer, probesets, generation_tokens=config.generation_tokens,
                                            batch_size=config.batch_size)
    unedited = summarize(base_scores)
    if config.method == "none":
        return _result(config, resolved.name, unedited, unedited, base_scores, [], facts)
    method = get_method(config.method)
    editor = method(method.params_for(model, dict(config.params)))
    env = EditEnv(base_hash=base_hash, corpus=config.corpus)
    # 3. edit
    checkpoints: list[dict[str, Any]] = []
    if config.sequential:
        def measured(point: dict[str, Any]) -> None:
            point["unedited"] = summarize(base_scores[: point["edits"]])  # the same records, unedited
            checkpoints.append(point)
            if on_checkpoint is not None:
                on_checkpoint(point)

        scores, seconds, extra = run_sequential(model, tokenizer, editor, env, facts, probesets, base_dists,
                                                config, base_hash, say, measured)
    else:
        scores, seconds = _independent(model, tokenizer, editor, env, facts, probesets, base_dists, config, say)
        extra = {}
    metrics = {**summarize(scores), **extra}
    result = _result(config, resolved.name, metrics, unedited, scores, seconds, facts)
    result.checkpoints = checkpoints
    return result


def _independent(model: Any, tokenizer: Any, editor: Any, env: Any, facts: Sequence[Fact],
                 probesets: Sequence[ProbeSet], base_dists: Sequence[list[Any]], config: EditBenchConfig,
                 say: Progress) -> tuple[list[dict[str, float]], list[float]]:
    from cathrepo.delta import applied

    scores: list[dict[str, float]] = []
    seconds: list[float] = []
    for start, batch in batches(facts, config.edit_batch):
        say("edits", start, len(facts))
        t0 = time.perf_counter()
        result = editor.compute(model, tokenizer, batch, env)
        seconds.extend([(time.perf_counter() - t0) / len(batch)] * len(batch))
        rows = range(start, start + len(batch))
        with applied(model, result.delta):
            got, _ = score_records(model, tokenizer, [probesets[i] for i in rows], base_dists=[base_dists[i] for i in rows],
                                   generation_tokens=config.generation_tokens, batch_size=config.batch_size)
        scores.extend({**s, "adapter_bytes": result.delta.num_bytes() / len(batch)} for s in got)
    say("edits", len(facts), len(facts))
    return scores, seconds


def _result(config: EditBenchConfig, model_name: str, metrics: Mapping[str, Any], unedited: Mapping[str, Any],
            scores: Sequence[Mapping[str, float]], seconds: Sequence[float], facts: Sequence[Fact]) -> EditBenchResult:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    full = {**dict(metrics), **{key: metrics.get(key) for key in ("retention", "mmlu_before", "mmlu_after")}}
    full["seconds_per_edit"] = statistics.median(seconds) if seconds else None
    sizes = [s["adapter_bytes"] for s in scores if "adapter_bytes" in s]
    full["adapter_bytes"] = statistics.median(sizes) if sizes else None  # float32 factors, as stored
    full["peak_rss_mb"] = round(peak, 1)
    records = [{"case_id": f.case_id, "subject": f.subject, **{k: round(v, 4) for k, v in s.items()}}
               for f, s in zip(facts, scores, strict=True)]
    return EditBenchResult(config, model_name, full, dict(unedited), records, list(seconds))
