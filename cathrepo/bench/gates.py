"""The gate benchmark behind ``cathrepo bench gates``: how long the regression suite takes at scale.

It builds the probe sets of N + 1 records (the last is the new edit) (relation templates and mined neighbours, without model checks so
that building is not what is timed), makes N small random rank-one deltas on the family's edit layer as
the active stack, and times the regression gate for one more edit: cold (both states scored) and warm
(the ``before`` state cached on disk, as it is for every edit after the first in a sequential workflow).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cathrepo.facts.probes import build_probes, load_known_facts
from cathrepo.facts.schema import load_facts


@dataclass(frozen=True)
class GateBenchConfig:
    data: Path
    n: int = 1000
    model: str | None = None
    known: Path | None = None
    n_paraphrases: int = 3
    n_neighbors: int = 3
    batch_size: int = 128
    dtype: str = "float32"
    stage: str = "edit"
    seed: int = 0


def random_deltas(model: Any, n: int, *, scale: float = 1e-4, seed: int = 0) -> list[Any]:
    """N rank-one deltas on the default edit layer, small enough to change no answer."""
    import torch

    from cathrepo.delta import Delta, LowRank
    from cathrepo.models import default_edit_layer, family_for, get_module, weight_shape

    name = family_for(model).layer_name("mlp_out", default_edit_layer(model))
    rows, cols = weight_shape(get_module(model, name))
    gen = torch.Generator().manual_seed(seed)
    return [Delta({name: LowRank(torch.randn(rows, 1, generator=gen) * scale, torch.randn(1, cols, generator=gen))})
            for _ in range(n)]


def bench_gates(config: GateBenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time the regression gate over ``config.n`` active edits at ``config.stage``; returns the numbers."""
    from cathrepo.gates.base import GATES, GateRun, run_gates
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.models import load_model, resolve_model

    say = progress or (lambda message: None)
    resolved = resolve_model(config.model)
    model, tokenizer = load_model(resolved.path)
    facts = load_facts(config.data, limit=config.n + 1)  # the last one is the new edit being gated
    known = load_known_facts(config.known) if config.known else load_known_facts()
    say(f"building {len(facts)} probe sets")
    t0 = time.perf_counter()
    *suite, new = [build_probes(f, known_facts=known, n_paraphrases=config.n_paraphrases,
                                n_neighbors=config.n_neighbors) for f in facts]
    build_seconds = time.perf_counter() - t0
    deltas = random_deltas(model, len(suite) + 1, seed=config.seed)
    policy = GatePolicy(batch_size=config.batch_size, regression_dtype=config.dtype)
    kinds = policy.regression_kinds
    gate = GATES.get("regression")(policy)
    chosen = gate.selection(GateRun(model, tokenizer, (), (), new, tuple(suite), policy, config.stage))
    probes = sum(map(len, chosen))
    common = {"suite": suite, "policy": policy, "gates": ["regression"], "probes": new, "stage": config.stage}
    timings = {}
    with tempfile.TemporaryDirectory(prefix="cathrepo-bench-gates-") as tmp:
        for label in ("cold", "warm"):
            say(f"regression over {len(suite)} edits ({probes} probes), {label}")
            if label == "warm":  # as the previous edit's gate run would have, cache the ``before`` state
                run_gates(model, tokenizer, before=deltas[:-1], after=deltas[:-1], base_hash="bench",
                          cache_dir=Path(tmp), **common)
            t0 = time.perf_counter()
            report = run_gates(model, tokenizer, before=deltas[:-1], after=deltas,
                               base_hash="bench" if label == "warm" else "unknown",
                               cache_dir=Path(tmp) if label == "warm" else None, **common)
            timings[label] = time.perf_counter() - t0
    result = report["regression"]
    return {
        "n": len(suite), "model": resolved.name, "stage": config.stage, "dtype": config.dtype, "probes": probes,
        "probes_all_kinds": sum(len(ps.of_kind(*kinds)) for ps in suite),
        "probes_per_edit": statistics.mean(len(ps.of_kind(*kinds)) for ps in suite),
        "seconds_cold": round(timings["cold"], 2), "seconds_warm": round(timings["warm"], 2),
        "build_seconds": round(build_seconds, 2), "passed": result.passed,
        "pass_after": result.metrics.get("pass_after"),
    }
