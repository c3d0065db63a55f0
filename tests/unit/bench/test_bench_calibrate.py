"""The gate calibration driver on a tiny model: every variant is gated, and a no-op is never refused."""

from __future__ import annotations

import json

from test_bench_edits import RECORDS

from cathrepo.bench.calibrate import WRITE_GATES, CalibrateConfig, bench_calibrate, statistic, summary_table
from cathrepo.gates.policy import GatePolicy

ROME = {"corpus_tokens": 400, "n_context": 2, "context_tokens": 4, "v_steps": 5}


def test_calibration_gates_every_variant_and_never_refuses_a_no_op(tiny_llama, tmp_path):
    _, _, path = tiny_llama
    data = tmp_path / "records.json"
    data.write_text(json.dumps(RECORDS))
    seen = []
    config = CalibrateConfig(data=data, n=2, skip=0, model=str(path), params=ROME,
                             variants=("zero", "random", "rome", "overscale"), overscale=50.0)
    result = bench_calibrate(config, on_record=lambda partial: seen.append(len(partial.rows)))
    assert seen == [4, 8]  # written as it goes, one record at a time
    edit_gates = list(GatePolicy().gates_for("edit"))
    assert len(result.rows) == 8 and all(list(r["gates"]) == edit_gates for r in result.rows)
    zero = [r for r in result.rows if r["variant"] == "zero"]
    assert not any(r["side_effect_refused"] for r in zero)
    assert all(r["gates"][g]["passed"] for r in zero for g in edit_gates if g not in WRITE_GATES)
    summary = result.summary()
    assert set(summary["variants"]) == {"zero", "random", "rome", "overscale"}
    assert summary["catch_rate"]["n"] == 2  # the two overscaled edits are the harmful ones here
    assert [row[0] for row in summary_table(result)] == sorted(edit_gates)
    assert statistic(result.rows, "norms", "max_growth", ["zero"])["max"] == 0.0
    assert json.loads(json.dumps(result.to_dict()))["summary"]["gates"]
