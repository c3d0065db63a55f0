"""Which parameter variants rescue a refused ROME edit (the measurement behind ROME's ``retry_variants``).

Each record is edited once at the default layer on the unedited model and judged by every gate of the
``edit`` stage; a refused edit is computed again at the same layer with each variant and judged the same
way. Tune on CounterFact records 5000 and above. Run several parts side by side (``--part i --parts k``)
and pass every part's JSON to ``--summary``:

    OMP_NUM_THREADS=1 python scripts/retry_variants.py --skip 5030 --n 40 --part 0 --parts 2 --out p0.json
    python scripts/retry_variants.py --summary p0.json p1.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

#: Variants measured besides the method's own retry variants (name -> ROME parameter overrides).
EXTRA = {"stronger": {"v_stop_prob": 0.8}}
DATA = Path(__file__).resolve().parents[2] / "shared/data/counterfact/counterfact-edit.json"


def _measure(args: argparse.Namespace) -> None:
    from cathrepo.bench.calibrate import _rome
    from cathrepo.bench.edits import EditBenchConfig, _facts
    from cathrepo.edits.base import EditEnv
    from cathrepo.edits.rome.method import RomeMethod
    from cathrepo.facts.probes import build_probes, known_by_model, load_known_facts
    from cathrepo.gates.base import run_gates
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.models import load_model, resolve_model, weights_sha256

    variants = {v.name: dict(v.overrides) for v in RomeMethod.retry_variants} | EXTRA
    resolved = resolve_model("embedded:smollm2-135m-instruct")
    model, tok = load_model(resolved.path)
    base_hash = weights_sha256(resolved.path)
    policy, env = GatePolicy(), EditEnv(base_hash=base_hash)
    facts = _facts(EditBenchConfig(data=Path(args.data), n=args.n, skip=args.skip))
    known = known_by_model(model, tok, load_known_facts(part="measure"), batch_size=policy.batch_size)

    def judge(params: dict[str, Any], fact: Any, probes: Any) -> dict[str, Any]:
        start = time.perf_counter()
        delta = _rome(model, params).compute(model, tok, [fact], env).delta
        report = run_gates(model, tok, before=(), after=(delta,), probes=probes, policy=policy, stage="edit",
                           base_hash=base_hash)
        return {"passed": report.passed, "failed": [r.name for r in report.failures],
                "seconds": round(time.perf_counter() - start, 1)}

    rows = []
    for i, fact in enumerate(facts):
        if i % args.parts != args.part:
            continue
        probes = build_probes(fact, model, tok, known, check_known=False)
        row = {"record": args.skip + i, "default": judge({}, fact, probes)}
        if not row["default"]["passed"]:
            row.update({name: judge(params, fact, probes) for name, params in variants.items()})
        rows.append(row)
        print(row["record"], {k: v["failed"] for k, v in row.items() if k != "record"}, flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))


def _summary(paths: list[str]) -> None:
    from cathrepo.edits.rome.method import RomeMethod

    rows = sorted((r for p in paths for r in json.loads(Path(p).read_text())), key=lambda r: r["record"])
    refused = [r for r in rows if not r["default"]["passed"]]
    print(f"records {len(rows)}, pass at the default layer {len(rows) - len(refused)}")
    for name in [k for k in refused[0] if k not in ("record", "default")] if refused else []:
        print(f"  {name}: rescues {sum(r[name]['passed'] for r in refused)} of {len(refused)}")
    directed = [r for r in refused if any(v.applies(r["default"]["failed"], ()) and r[v.name]["passed"]
                                          for v in RomeMethod.retry_variants)]
    print(f"  the variants the refusing gates call for: rescue {len(directed)} of {len(refused)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--skip", type=int, default=5030)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1)
    parser.add_argument("--out", default="retry-variants.json")
    parser.add_argument("--summary", nargs="+", metavar="JSON", help="Summarise earlier runs instead.")
    args = parser.parse_args()
    if args.summary:
        _summary(args.summary)
    else:
        _measure(args)


if __name__ == "__main__":
    main()
