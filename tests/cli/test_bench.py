"""``cathrepo bench edits/gates`` and ``cathrepo gate`` through the real command line (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cathrepo.cli import cli, main
from cathrepo.gates.results import GateReport, GateResult

DATA = Path(__file__).parents[1] / "data"


def test_bench_edits_unedited_writes_json(tiny_llama, tmp_path):
    _, _, model_dir = tiny_llama
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, [
        "bench", "edits", "--data", str(DATA / "counterfact-sample.json"), "--n", "2", "--method", "none",
        "--model", str(model_dir), "--known", str(DATA / "known-sample.json"), "--json", str(out),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "unedited" in result.output and "es" in result.output
    data = json.loads(out.read_text())
    for key in ("n", "method", "model", "es", "ps", "ns", "s", "ns_plus", "nkl", "gen_success", "retention",
                "mmlu_before", "mmlu_after", "seconds_per_edit", "peak_rss_mb"):
        assert key in data
    assert data["n"] == 2 and data["method"] == "none"


def test_bench_gates_times_the_regression_suite(tiny_llama, tmp_path):
    _, _, model_dir = tiny_llama
    out = tmp_path / "gates.json"
    result = CliRunner().invoke(cli, [
        "bench", "gates", "--data", str(DATA / "counterfact-sample.json"), "--n", "5", "--model", str(model_dir),
        "--json", str(out),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["n"] == 5 and data["probes"] >= 5 and data["probes_all_kinds"] > data["probes"]
    assert data["seconds_cold"] >= 0 and data["seconds_warm"] >= 0


def test_bench_unknown_method_is_one_red_line(tiny_llama, capsys):
    _, _, model_dir = tiny_llama
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "edits", "--data", str(DATA / "counterfact-sample.json"), "--n", "1", "--method", "rom",
              "--model", str(model_dir), "--known", str(DATA / "known-sample.json")])
    assert exit_info.value.code == 2
    assert "Did you mean: rome" in capsys.readouterr().err


class _FakeRepo:
    def __init__(self, report: GateReport) -> None:
        self.report = report
        self.calls: list[tuple] = []

    def gate(self, rev, **options):
        self.calls.append((rev, options))
        return self.report


@pytest.mark.parametrize("passed", [True, False])
def test_gate_command_renders_and_exits(monkeypatch, passed, capsys):
    from cathrepo.cli.commands import gate as gate_module

    report = GateReport((GateResult("efficacy", True, {"es": 1.0}), GateResult("retention", passed, {"drop": 0.1})),
                        stage="revision")
    repo = _FakeRepo(report)
    monkeypatch.setattr(gate_module, "open_repo", lambda ctx: repo)
    code = main(["gate", "HEAD~1", "--json"]) or 0  # the console script exits with main's return value
    assert code == (0 if passed else 4)
    assert GateReport.from_json(capsys.readouterr().out) == report
    assert repo.calls == [("HEAD~1", {"stage": "revision", "gates": None, "progress": repo.calls[0][1]["progress"]})]
    if not passed:
        with pytest.raises(SystemExit) as exit_info:
            main(["gate"])
        assert exit_info.value.code == 4
        captured = capsys.readouterr()
        assert "retention FAIL" in captured.out and "fails its gates: retention" in captured.err
    result = CliRunner().invoke(cli, ["gate", "--report", "md"])
    assert "## Gates (revision)" in result.output
