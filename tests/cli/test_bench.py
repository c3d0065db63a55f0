"""``cathrepo bench edits/gates/repo`` and ``cathrepo gate`` through the real command line (tiny models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cathrepo.cli import cli, main
from cathrepo.exceptions import InvalidInputError
from cathrepo.gates.results import GateReport, GateResult
from cathrepo.repo import Repo

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


def test_bench_edits_checkpoint_needs_sequential(tiny_llama):
    _, _, model_dir = tiny_llama
    result = CliRunner().invoke(cli, [
        "bench", "edits", "--data", str(DATA / "counterfact-sample.json"), "--n", "2", "--method", "none",
        "--model", str(model_dir), "--checkpoint", "1",
    ])
    assert result.exit_code == 2 and "add --sequential" in result.output


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
        assert "retention FAIL" in captured.out and "failed its gates: retention FAIL" in captured.err
    result = CliRunner().invoke(cli, ["gate", "--report", "md"])
    assert "## Gates (revision)" in result.output


def test_bench_repo_edits_each_record_in_its_own_process(repo_dir, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    records = [{"case_id": 7, "prompt": "The capital of Italy is Rome", "subject": "Rome", "target_new": "Paris",
                "target_true": "Tokyo"},
               {"prompt": "Rome is the capital of Italy", "subject": "Rome", "target_new": "London"},  # no true target
               {"case_id": 9, "prompt": "Toko Yasuda plays the guitar", "subject": "guitar", "target_new": "London",
                "target_true": "piano"}]
    data, out = tmp_path / "records.json", tmp_path / "bench.json"
    data.write_text(json.dumps(records))
    result = CliRunner().invoke(cli, ["bench", "repo", "--data", str(data), "--n", "2", "--repo", str(repo_dir),
                                      "--param", "v_steps=40", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "committed_share" in result.output and "verify_clean" in result.output
    report = json.loads(out.read_text())
    assert [r["index"] for r in report["records"]] == [0, 2]  # the record without a true target is skipped
    assert [r["case_id"] for r in report["records"]] == [7, 9]
    assert report["n"] == 2 and report["committed"] + report["refused"] == 2 and report["errors"] == 0
    assert report["verify_clean"] is True
    assert 0 < report["wall_min_s"] <= report["wall_median_s"] <= report["wall_p90_s"] <= report["wall_max_s"]
    for row in report["records"]:
        assert (row["status"] == "committed") == bool(row["commit"])
        assert row["status"] == "committed" or row["failed_gates"]
    assert not list(scratch.iterdir())  # the per-record input files are gone (the repository was given)


def test_bench_repo_resume_goes_on_after_the_records_a_cut_run_edited(repo_dir, tmp_path, monkeypatch):
    """--resume: a run of 2 records after a cut run of 1 edits only the second; the first row is read
    back as it was written. A record committed after the last row was written (cut between the commit and
    the write) is recovered from the repository, not edited twice; another run's --out is refused."""
    _, data = _one_record_run(tmp_path, monkeypatch)
    data.write_text(json.dumps(json.loads(data.read_text()) * 2))
    out = tmp_path / "bench.json"

    def run(n: int, *extra: str):
        return CliRunner().invoke(cli, ["bench", "repo", "--data", str(data), "--n", str(n), "--repo", str(repo_dir),
                                        "--param", "v_steps=40", "--out", str(out), *extra], catch_exceptions=False)

    assert run(1).exit_code == 0
    first = json.loads(out.read_text())
    assert first["records"][0]["status"] == "committed", first["records"][0]
    edits = len(Repo.open(repo_dir).edit_ids())
    whole = json.loads(out.read_text())
    out.write_text(json.dumps({**whole, "records": []}))  # as if cut before the first row was written
    result = run(2, "--resume")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["index"] for r in report["records"]] == [0, 1] and report["n"] == 2
    assert report["records"][0]["recovered"] is True and report["records"][0]["wall_s"] is None
    assert "recovered" not in report["records"][1] and report["records"][1]["wall_s"] > 0
    assert report["verify_clean"] is True
    out.write_text(json.dumps(first))
    edits_now = len(Repo.open(repo_dir).edit_ids())
    assert edits_now == edits + (report["records"][1]["status"] == "committed")
    again = run(2, "--resume")  # the first record's row read back, the second edited (again: a new fact id)
    assert again.exit_code == 0 and json.loads(out.read_text())["records"][0] == first["records"][0]
    bad = CliRunner().invoke(cli, ["bench", "repo", "--data", str(data), "--n", "2", "--skip", "1", "--repo",
                                   str(repo_dir), "--out", str(out), "--resume"])
    assert isinstance(bad.exception, InvalidInputError) and "other records" in str(bad.exception)
    assert json.loads(out.read_text())["records"][0] == first["records"][0]  # the refused resume wrote nothing


def test_bench_repo_through_a_worker_gives_what_fresh_processes_give(tiny_llama, tmp_path, monkeypatch):

    _, _, model_dir = tiny_llama
    scratch, data = _one_record_run(tmp_path, monkeypatch)
    reports = []
    for name, extra in (("fresh", []), ("worker", ["--worker"])):
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(cli, ["bench", "repo", "--data", str(data), "--n", "1", "--repo",
                                          str(tmp_path / name), "--base", str(model_dir), "--param", "v_steps=40",
                                          "--out", str(out), *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text()))
    fresh, worker = reports
    assert (fresh["worker"], worker["worker"]) == (False, True)
    assert worker["errors"] == 0 and worker["verify_clean"] is True
    assert _outcomes(worker) == _outcomes(fresh)  # the same verdicts and gate numbers, computed in the worker
    assert not [p for p in scratch.iterdir() if p.name.startswith("worker")]


def _one_record_run(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A scratch directory the run's temporary files go to, and a file of one record with a true target."""
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    data = tmp_path / "records.json"
    data.write_text(json.dumps([{"case_id": 7, "prompt": "The capital of Italy is Rome", "subject": "Rome",
                                 "target_new": "Paris", "target_true": "Tokyo"}]))
    return scratch, data


def _outcomes(report: dict) -> list:
    """Each record's status, failing gates and attempts, without the times."""
    return [(r["status"], r["failed_gates"], [{k: v for k, v in a.items() if k != "seconds"}
                                              for a in r.get("attempts", [])]) for r in report["records"]]


def test_bench_repo_fresh_gate_cache_leaves_the_users_gate_cache_alone(tiny_llama, tmp_path, monkeypatch):

    _, _, model_dir = tiny_llama
    scratch, data = _one_record_run(tmp_path, monkeypatch)
    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("CATHREPO_CACHE_DIR", str(user_cache))
    (user_cache / "stats").mkdir(parents=True)
    (user_cache / "stats" / "kept.txt").write_text("statistics")
    reports = []
    for name, extra in (("shared", []), ("fresh", ["--fresh-gate-cache"])):
        if name == "fresh":  # what the shared run stored goes, so anything the fresh run stores there shows
            gates = sorted(p.name for p in (user_cache / "gates").rglob("*") if p.is_file())
            assert gates, "the shared run keeps its gate measurements in the user's cache"
            shutil.rmtree(user_cache / "gates")
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(cli, ["bench", "repo", "--data", str(data), "--n", "1", "--repo",
                                          str(tmp_path / name), "--base", str(model_dir), "--param", "v_steps=40",
                                          "--out", str(out), *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text()))
    shared, fresh = reports
    assert (shared["fresh_gate_cache"], fresh["fresh_gate_cache"]) == (False, True)
    assert fresh["errors"] == 0 and fresh["verify_clean"] is True
    assert _outcomes(fresh) == _outcomes(shared)  # the same verdicts from an empty gate cache
    assert not (user_cache / "gates").exists()  # the fresh run measured its gates elsewhere
    assert (user_cache / "stats" / "kept.txt").read_text() == "statistics"  # the links' targets stay
    assert not list(scratch.iterdir())  # the run's own cache went with it


def test_bench_repo_restrain_sets_a_created_repository_and_checks_a_given_one(repo_dir, tmp_path):
    """A repository the run creates gets ``[stack]`` in a signed commit of its own; one it is given must
    already have the run's setting (the run refuses before editing anything)."""
    from cathrepo.bench.repo import RepoBenchConfig, _stacked
    from cathrepo.exceptions import InvalidInputError
    from cathrepo.repo import Repo

    config = RepoBenchConfig(data=tmp_path / "records.json", restrain="clip", restrain_factor=0.5)
    head = Repo.open(repo_dir).git.head()
    with pytest.raises(InvalidInputError, match="restrain='' at 1, not the run's restrain='clip' at 0.5") as info:
        _stacked(repo_dir, config, created=False)
    assert "--restrain" in info.value.hint and Repo.open(repo_dir).git.head() == head
    _stacked(repo_dir, config, created=True)  # as if this run had made it
    repo = Repo.open(repo_dir)
    assert (repo.config.stack.restrain, repo.config.stack.restrain_factor) == ("clip", 0.5)
    assert repo.git.head() != head and repo.verify().ok and not repo.git.status_porcelain()
    _stacked(repo_dir, config, created=False)  # now it matches: nothing to do
    assert Repo.open(repo_dir).git.head() == repo.git.head()
    with pytest.raises(InvalidInputError, match="'clip' or 'prune'"):
        RepoBenchConfig(data=tmp_path / "records.json", restrain="svd")
