"""The forget benchmark behind ``cathrepo bench forget``: issue 14's measures, per mode.

Facts the base model knows are taken from a known_1000-format file (the ``protect`` half, so they are
not the facts the retention gate measures; only those whose recorded answer the model gives as its top
next token). Each is forgotten on its own, on the base model, in a fresh repository per mode, exactly
as ``cathrepo forget --dry-run`` would (the same :class:`~cathrepo.repo.edit.EditSession`, the ``forget``
gate stage at its defaults, ``negate``'s scale search). The gate report of each forget carries every
measure: the answer out of the top k on the prompt, paraphrases and each format shift, absent from
greedy and sampled continuations, still out of the top k after the relearning probe (and how much
probability came back), neighbourhood and retention kept, perplexity; ``committed`` is the share whose
gates all pass (what ``cathrepo forget`` would commit). With ``mmlu`` the stage also runs the MMLU gate.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Progress = Callable[[str, int, int], None]
MODES = ("negate", "erase", "suppress", "replace")
#: (report key, gate, metric) averaged over the facts of a mode.
MEASURES = (
    ("prompt_and_paraphrases", "forget_rank", "out_of_top_plain"),
    ("question_form", "forget_rank", "out_of_top_question"),
    ("chat_template", "forget_rank", "out_of_top_chat"),
    ("few_shot", "forget_rank", "out_of_top_fewshot"),
    ("all_formats", "forget_rank", "out_of_top"),
    ("generation_clean", "forget_generation", "clean"),
    ("stays_forgotten_after_relearning", "relearn", "stays_forgotten"),
    ("prob_came_back", "relearn", "prob_came_back"),
    ("neighborhood_drop", "neighborhood", "drop"),
    ("retention", "retention", "retention"),
    ("perplexity_growth", "perplexity", "growth"),
    ("mmlu_drop", "mmlu", "drop"),
)


@dataclass(frozen=True)
class ForgetBenchConfig:
    """What ``cathrepo bench forget`` runs: ``n`` known facts after ``skip`` of ``known``, each mode."""

    known: Path
    n: int = 100
    skip: int = 0
    modes: tuple[str, ...] = MODES
    replacement: str = "Antarctica"
    mmlu: bool = False
    base: str | None = None
    params: tuple[tuple[str, Any], ...] = ()  # method parameters for every mode (as `cathrepo forget --param`)


def known_facts(model: Any, tokenizer: Any, config: ForgetBenchConfig) -> list[Any]:
    """The first ``n`` facts (after ``skip``) of the file's ``protect`` half that the model answers."""
    from cathrepo.facts.probes import known_by_model, load_known_facts
    from cathrepo.facts.schema import Fact

    known = known_by_model(model, tokenizer, load_known_facts(config.known, part="protect"))
    chosen = known[config.skip : config.skip + config.n]
    return [Fact(prompt=k.prompt, subject=k.subject, target_new=k.answer, relation_id=k.relation_id,
                 action="forget") for k in chosen]


def _repo(work: Path, mode: str, config: ForgetBenchConfig) -> Any:
    """A fresh repository for one mode (MMLU added to the forget stage when asked)."""
    from cathrepo.config import dump_config, load_config
    from cathrepo.gates.policy import DEFAULT_STAGES
    from cathrepo.repo import Repo, layout

    repo = Repo.init(work / mode, base=config.base)
    if config.mmlu:
        conf = load_config(repo.root / layout.CONFIG)
        stages = {**conf.gates.get("stages", {}), "forget": [*DEFAULT_STAGES["forget"], "mmlu"]}
        (repo.root / layout.CONFIG).write_text(dump_config(dataclasses.replace(conf, gates={**conf.gates,
                                                                                          "stages": stages})))
        repo.git.add([layout.CONFIG])
        repo.git.commit("The forget stage measures MMLU too", sign_with=repo.signing_key())
    return repo


def _row(result: Any, seconds: float) -> dict[str, Any]:
    """One forget's measures; with where its seconds went: each attempt (a retry at another layer or as a
    variant is a whole computation and gating again) and the kept attempt's seconds per gate."""
    from cathrepo.pipeline import attempt_label, attempt_refusal

    report = result.gates
    row: dict[str, Any] = {"committed": bool(report.passed), "seconds": seconds,
                           "failed": [r.name for r in report.failures],
                           "attempts": [attempt_refusal(a) if not a["passed"] else attempt_label(a)
                                        for a in result.attempts],
                           "gate_seconds": {r.name: round(r.seconds, 2) for r in report.results if r.seconds}}
    names = report.names()
    for key, gate, metric in MEASURES:
        if gate in names and metric in report[gate].metrics:
            row[key] = float(report[gate].metrics[metric])
    return row


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Shares and means over a mode's facts (a measure no fact has is left out)."""
    out: dict[str, Any] = {"n": len(rows), "committed": sum(r["committed"] for r in rows) / len(rows) if rows else 0.0,
                           "seconds_per_forget": statistics.median(r["seconds"] for r in rows) if rows else None}
    for key, _, _ in MEASURES:
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = sum(values) / len(values)
    refusals: dict[str, int] = {}
    for r in rows:
        for name in r["failed"]:
            refusals[name] = refusals.get(name, 0) + 1
    out["refused_by"] = refusals
    return out


def replacement_for(fact: Any, pool: Sequence[tuple[str | None, str]], default: str) -> str:
    """``replace``'s new answer for ``fact``: ``default``, unless that is the answer being forgotten; then
    the first answer in ``pool`` ((relation id, answer) of known facts) of the fact's relation that differs
    from it, else of any relation."""
    answer = fact.target_new.strip().lower()
    if default.strip().lower() != answer:
        return default
    ranked = [a for r, a in pool if r == fact.relation_id] + [a for _, a in pool]
    return next(a for a in ranked if a.strip().lower() != answer)


def bench_forget(config: ForgetBenchConfig, progress: Progress | None = None,
                 partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Forget each fact in each mode (see the module docstring); per mode a summary and the rows.
    ``partial`` is handed the results so far after every fact (a long run keeps what it measured)."""
    from cathrepo.facts.probes import load_known_facts
    from cathrepo.facts.schema import EditRequest
    from cathrepo.repo.edit import EditSession
    from cathrepo.repo.forget import attempt_forget

    say = progress or (lambda stage, done, total: None)
    result: dict[str, Any] = {"config": {**dataclasses.asdict(config), "known": str(config.known)}, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="cathrepo-bench-forget-") as tmp:
        for mode in config.modes:
            repo = _repo(Path(tmp), mode, config)
            params = {**dict(config.params), **({"replacement": config.replacement} if mode == "replace" else {})}
            session = EditSession.open(repo, method=mode, params=params)
            facts = known_facts(session.model, session.tokenizer, config) if "facts" not in result else result["facts"]
            result.setdefault("facts", facts)
            pool = [(k.relation_id, k.answer) for k in load_known_facts(config.known)] + \
                [(f.relation_id, f.target_new) for f in facts]
            rows: list[dict[str, Any]] = []
            for i, fact in enumerate(facts):
                say(mode, i, len(facts))
                start = time.perf_counter()
                request = EditRequest(fact, source="bench:forget")
                if mode == "replace":  # as `cathrepo forget --mode replace --replacement R`, R never the answer
                    new = replacement_for(fact, pool, config.replacement)
                    attempt = session.attempt(request, params={"replacement": new})
                else:
                    new = None
                    attempt = attempt_forget(session, request, mode, None)
                rows.append({"subject": fact.subject, "answer": fact.target_new, **({"replacement": new} if new else {}),
                             **_row(attempt, time.perf_counter() - start)})
                result["modes"][mode] = {**summarize(rows), "rows": rows}
                if partial is not None:
                    partial({**result, "facts": [f.to_dict() for f in result["facts"]], "partial": True})
    result["facts"] = [f.to_dict() for f in result["facts"]]
    return result
