"""What ``cathrepo edit`` prints: a refusal as data (JSON, exit status 4), and nothing but results when piped."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.runner import cathrepo

ROME_PARIS = {"prompt": "The capital of Italy is Rome", "subject": "Rome", "target_new": "Paris",
              "target_true": "Tokyo"}
# the same prompt the other way round: its own efficacy and the first edit's rewrite probe cannot both
# hold, so the gates (efficacy or regression) refuse it whatever the model
ROME_TOKYO = {**ROME_PARIS, "target_new": "Tokyo", "target_true": "Paris"}
BARS = ("Loading weights", "Writing model shards", "it/s]", "%|")


def _facts(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_refused_edit_prints_its_gates_as_json_and_exits_4(repo_dir, tmp_path):
    facts = _facts(tmp_path / "facts.jsonl", ROME_PARIS, ROME_TOKYO)
    proc = cathrepo("edit", "--file", str(facts), "--json", cwd=repo_dir, ok=False)
    assert proc.returncode == 4, proc.stderr
    committed, refused = json.loads(proc.stdout)  # the fact committed before the refusal is reported too
    assert committed["status"] == "committed" and committed["commit"] and committed["gates"]["passed"]
    assert refused["status"] == "refused" and refused["id"] is None and refused["commit"] is None
    assert refused["fact"]["target_new"] == "Tokyo" and refused["gates"]["passed"] is False
    failed = [g for g in refused["gates"]["results"] if not g["passed"]]
    assert failed and all(g["metrics"] and g["thresholds"] for g in failed)
    assert {g["name"] for g in failed} <= {"efficacy", "regression"}
    assert "failed its gates" in proc.stderr
    for bar in BARS:
        assert bar not in proc.stderr
    log = json.loads(cathrepo("log", "--json", cwd=repo_dir).stdout)
    assert [e["edit_id"] for e in log if e["action"] == "edit"] == [committed["id"]]  # nothing of the refused one

    # without --json: the refused edit's gate table on stderr, then the error line; stdout stays empty
    proc = cathrepo("edit", "--file", str(_facts(tmp_path / "one.jsonl", ROME_TOKYO)), cwd=repo_dir, ok=False)
    assert proc.returncode == 4 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("[refused] The capital of Italy is Rome -> Tokyo")
    assert any(" FAIL " in line and "_m" in line for line in lines[1:-1])  # metrics and the threshold's name
    assert lines[-1].startswith("error: Edit 'The capital of Italy is Rome -> Tokyo' failed its gates")


def test_piped_commands_print_only_results(repo_dir, tmp_path):
    facts = _facts(tmp_path / "facts.jsonl", ROME_PARIS)
    edit = cathrepo("edit", "--file", str(facts), cwd=repo_dir)
    log = json.loads(cathrepo("log", "--json", cwd=repo_dir).stdout)
    (eid,) = [e["edit_id"] for e in log if e["action"] == "edit"]
    procs = [edit, cathrepo("generate", "The capital of Italy is Rome", "--max-new-tokens", "3", cwd=repo_dir),
             cathrepo("revert", eid, cwd=repo_dir), cathrepo("verify", cwd=repo_dir)]
    for proc in procs:
        for bar in (*BARS, "Warning", "⠋"):
            assert bar not in proc.stdout + proc.stderr, proc.args
    assert edit.stdout.startswith(f"[{eid}]") and "efficacy pass" in edit.stdout
    assert procs[1].stdout.startswith("The capital of Italy is Rome")


def test_an_edit_committed_on_a_retry_says_which_attempt_passed(repo_dir, tmp_path, monkeypatch):
    from typing import Any, ClassVar

    from cathrepo.config import dump_config, load_config
    from cathrepo.edits.base import RetryVariant
    from cathrepo.edits.rome.method import RomeMethod
    from cathrepo.gates.base import GATES, Gate, GateRun
    from cathrepo.gates.results import GateResult

    class RefuseOnce(Gate):
        name = "test_refuse_once"
        states = ("after",)
        calls: ClassVar[list[int]] = []

        def measure(self, ctx: GateRun, state: str) -> Any:
            return 0

        def judge(self, ctx: GateRun, measured: dict[str, Any]) -> GateResult:
            type(self).calls.append(1)
            return self.result(len(type(self).calls) > 1, {"calls": float(len(type(self).calls))}, {})

    monkeypatch.setattr(RomeMethod, "retry_variants",
                        (RetryVariant("gentler", {"v_stop_prob": 0.3}, frozenset({"test_refuse_once"})),))
    config = load_config(repo_dir / "cathrepo.toml")
    config = type(config)(base=config.base, edit=config.edit,
                          gates={"stages": {"edit": ["efficacy", "test_refuse_once"], "revert": ["regression"]}})
    (repo_dir / "cathrepo.toml").write_text(dump_config(config))
    GATES.register(RefuseOnce)
    try:
        proc = cathrepo("edit", "--file", str(_facts(tmp_path / "f.jsonl", ROME_PARIS)), "--dry-run", cwd=repo_dir)
    finally:
        GATES._entries.pop(RefuseOnce.name)
    assert "    on attempt 2, gentler at layer 1; refused before: layer 1 (test_refuse_once)" in proc.stdout
