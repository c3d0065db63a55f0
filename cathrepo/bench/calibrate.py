"""``cathrepo bench calibrate``: each gate's noise and signal, measured on edits of known character.

For every record the gates of the ``edit`` stage run (the repository's policy, an empty stack) on:

- **null edits**, which change nothing a gate should object to:
  ``zero`` (the ROME delta's factors with B zeroed: an exact no-op), ``own`` (a ROME edit of the fact
  to the answer the model already gives) and ``random`` (a random rank-one delta with the ROME delta's
  factor norms, on the same layer);
- the **real** edit (``rome``, the default editor);
- **harmful edits**, known to be bad: ``overscale`` (the ROME delta ×``overscale``: an over-strong
  value), ``overtrain`` (ROME without early stopping, weight decay, KL or a tight norm bound),
  ``layer`` (ROME at a layer far from where the fact lives), ``lora-noloc`` (a LoRA trained with every
  locality term off).

A gate's *false refusals* are its failures on null edits (only the side-effect gates count on ``zero``
and ``random``, which write no fact; every gate counts on ``own``); its *catches* are its failures on
harmful edits, and the suite's catch rate is the share of harmful edits some gate refuses. Each gate's
statistic is kept per edit, so thresholds can be read off the distributions (BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cathrepo.exceptions import CathrepoError

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
NULL = ("zero", "own", "random")
REAL = ("rome",)
HARMFUL = ("overscale", "overtrain", "layer", "lora-noloc")
VARIANTS = (*NULL, *REAL, *HARMFUL)
#: Gates that judge whether the fact was written; a null edit that writes nothing is not held to them.
WRITE_GATES = ("efficacy", "paraphrase", "generation")


@dataclass(frozen=True)
class CalibrateConfig:
    """What ``cathrepo bench calibrate`` runs.

    Attributes:
        data: CounterFact (flat or ROME layout) or zsRE records.
        n, skip: records to use (the first N after ``skip`` with a true target).
        variants: which edits to make per record (see the module docstring).
        policy: the ``[gates]`` table to judge with (None: the defaults).
        params: ROME parameter overrides for the ``rome``-based variants.
        overscale: factor of the ``overscale`` variant.
        wrong_layer: layer of the ``layer`` variant (None: the last layer but two).
        seed: seed of the ``random`` variant.
    """

    data: Path
    n: int = 20
    skip: int = 5000
    variants: Sequence[str] = VARIANTS
    model: str | None = None
    policy: Mapping[str, Any] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    overscale: float = 4.0
    wrong_layer: int | None = None
    seed: int = 0


@dataclass
class CalibrateResult:
    config: CalibrateConfig
    rows: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """Per gate: refusal share on null edits (false refusals), on the real edit, on harmful edits
        (catches); the suite's catch rate; per variant the share refused."""
        gates = sorted({g for r in self.rows for g in r["gates"]})
        out: dict[str, Any] = {"gates": {}, "variants": {}}
        for gate in gates:
            entry = {}
            for group, variants in (("null", NULL), ("real", REAL), ("harmful", HARMFUL)):
                verdicts = [not r["gates"][gate]["passed"] for r in self.rows
                            if r["variant"] in variants and gate in r["gates"] and not r["gates"][gate]["skipped"]
                            and not (r["variant"] in ("zero", "random") and gate in WRITE_GATES)]
                entry[group] = _share(verdicts)
            out["gates"][gate] = entry
        for variant in VARIANTS:
            rows = [r for r in self.rows if r["variant"] == variant]
            if rows:
                out["variants"][variant] = {"n": len(rows), "refused": _share([not r["passed"] for r in rows]),
                                            "refused_side_effects": _share([r["side_effect_refused"] for r in rows])}
        harmful = [r for r in self.rows if r["variant"] in HARMFUL]
        out["catch_rate"] = _share([r["side_effect_refused"] or not r["passed"] for r in harmful])
        return out

    def to_dict(self) -> dict[str, Any]:
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self.config).items()}
        return {"config": cfg, "summary": self.summary(), "rows": self.rows}


def _share(flags: Sequence[bool]) -> dict[str, float]:
    return {"n": len(flags), "share": (sum(flags) / len(flags)) if flags else float("nan")}


def bench_calibrate(config: CalibrateConfig, progress: Progress | None = None,
                    on_record: Callable[[CalibrateResult], None] | None = None) -> CalibrateResult:
    """Run the calibration; ``progress(stage, done, total)`` reports advance and ``on_record`` receives
    the result so far after each record (a long run can be written as it goes)."""
    from cathrepo.bench.edits import _facts
    from cathrepo.edits.base import EditEnv
    from cathrepo.facts.probes import build_probes, known_by_model, load_known_facts
    from cathrepo.gates.base import run_gates
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.models import load_model, resolve_model, weights_sha256

    say = progress or (lambda stage, done, total: None)
    resolved = resolve_model(config.model)
    model, tokenizer = load_model(resolved.path)
    base_hash = weights_sha256(resolved.path)
    policy = GatePolicy.from_dict(config.policy)
    env = EditEnv(base_hash=base_hash)
    facts = _facts(_as_edit_config(config))
    known = known_by_model(model, tokenizer, load_known_facts(part="measure"), batch_size=policy.batch_size)
    rows: list[dict[str, Any]] = []
    for i, fact in enumerate(facts):
        say("records", i, len(facts))
        probes = build_probes(fact, model, tokenizer, known, check_known=False, n_neighbors=policy.neighbors)
        rome = _rome(model, config.params).compute(model, tokenizer, [fact], env).delta
        for variant in config.variants:
            t0 = time.perf_counter()
            try:
                delta, used = _variant(variant, model, tokenizer, fact, probes, rome, known, env, config, policy.neighbors)
            except CathrepoError as exc:
                rows.append({"record": config.skip + i, "case_id": fact.case_id, "variant": variant,
                             "error": str(exc), "passed": False, "side_effect_refused": False, "gates": {}})
                continue
            report = run_gates(model, tokenizer, before=(), after=(delta,), probes=used, policy=policy,
                               stage="edit", base_hash=base_hash)
            gates = {r.name: {"passed": r.passed, "skipped": r.skipped, "metrics": dict(r.metrics),
                              "flips": list(r.flips)} for r in report.results}
            side = any(not r.passed for r in report.results if r.name not in WRITE_GATES)
            rows.append({"record": config.skip + i, "case_id": fact.case_id, "variant": variant,
                         "passed": report.passed, "side_effect_refused": side, "gates": gates,
                         "seconds": round(time.perf_counter() - t0, 2)})
        if on_record is not None:
            on_record(CalibrateResult(config, rows))
    say("records", len(facts), len(facts))
    return CalibrateResult(config, rows)


def _as_edit_config(config: CalibrateConfig) -> Any:
    from cathrepo.bench.edits import EditBenchConfig

    return EditBenchConfig(data=config.data, n=config.n, skip=config.skip)


def _rome(model: Any, params: Mapping[str, Any]) -> Any:
    from cathrepo.edits.base import get_method

    method = get_method("rome")
    return method(method.params_for(model, dict(params)))


def _variant(variant: str, model: Any, tokenizer: Any, fact: Any, probes: Any, rome: Any, known: Any,
             env: Any, config: CalibrateConfig, neighbors: int) -> tuple[Any, Any]:
    """(delta, probes) of one variant (``neighbors``: mined per edit, as the policy says)."""
    import torch

    from cathrepo.delta import Delta, LowRank
    from cathrepo.edits.base import get_method
    from cathrepo.facts.probes import build_probes, model_answer
    from cathrepo.models import num_layers

    if variant == "rome":
        return rome, probes
    if variant == "zero":
        return Delta({k: LowRank(f.B * 0, f.A, f.scale) for k, f in rome.factors.items()}), probes
    if variant == "random":
        g = torch.Generator().manual_seed(config.seed + (fact.case_id or 0))
        factors = {}
        for name, f in rome.factors.items():
            b, a = torch.randn(f.B.shape, generator=g), torch.randn(f.A.shape, generator=g)
            factors[name] = LowRank(b / b.norm() * f.B.norm() * f.scale, a / a.norm() * f.A.norm())
        return Delta(factors), probes
    if variant == "own":
        own = model_answer(model, tokenizer, fact.prompt)
        if not own:
            raise CathrepoError("the model gives no answer to continue")
        null = dataclasses.replace(fact, target_new=own, target_true=fact.target_new, paraphrases=(),
                                   neighborhood=(), generation_prompts=())
        used = build_probes(null, model, tokenizer, known, check_known=False, n_neighbors=neighbors)
        return _rome(model, config.params).compute(model, tokenizer, [null], env).delta, used
    if variant == "overscale":
        return rome.scaled(config.overscale), probes
    if variant == "overtrain":
        params = {**config.params, "v_stop_nll": 0.0, "v_stop_prob": 0.0, "v_steps": 60, "v_lr": 1.0, "clamp_norm_factor": 20.0,
                  "v_weight_decay": 0.0, "kl_factor": 0.0, "context_kl": 0.0}
        return _rome(model, params).compute(model, tokenizer, [fact], env).delta, probes
    if variant == "layer":
        layer = config.wrong_layer if config.wrong_layer is not None else num_layers(model) - 3
        return _rome(model, {**config.params, "layer": layer}).compute(model, tokenizer, [fact], env).delta, probes
    if variant == "lora-noloc":
        method = get_method("lora")
        params = method.params_for(model, {"anchor_weight": 0.0, "anchor_target_weight": 0.0,
                                           "neighborhood_anchors": False, "template_anchors": 0,
                                           "generic_anchors": 0, "stop_kl": 0.0, "stop_nll": 0.01,
                                           "layer_window": 0})
        return method(params).compute(model, tokenizer, [fact], env).delta, probes
    raise CathrepoError(f"Unknown calibration variant '{variant}'.", hint=f"Use {', '.join(VARIANTS)}.")


def summary_table(result: CalibrateResult) -> list[tuple[str, str, str, str]]:
    """Rows (gate, null refusals, real refusals, harmful catches) as printed by the command."""
    summary = result.summary()
    rows = []
    for gate, entry in summary["gates"].items():
        rows.append((gate, *(_fmt(entry[g]) for g in ("null", "real", "harmful"))))
    return rows


def _fmt(share: Mapping[str, float]) -> str:
    if not share["n"]:
        return "-"
    return f"{share['share']:.0%} of {share['n']}"


def statistic(rows: Sequence[Mapping[str, Any]], gate: str, metric: str, variants: Sequence[str]) -> dict[str, float]:
    """Median, 95th percentile and maximum of one gate metric over the rows of ``variants``."""
    values = sorted(r["gates"][gate]["metrics"][metric] for r in rows
                    if r["variant"] in variants and gate in r["gates"] and metric in r["gates"][gate]["metrics"])
    if not values:
        return {}
    return {"median": statistics.median(values), "p95": values[min(len(values) - 1, int(0.95 * len(values)))],
            "max": values[-1], "n": len(values)}
