"""The command line on a tiny model: every verb of the edit repository, exit codes and error lines.

The first test runs the installed ``python -m cathrepo`` in subprocesses from edit to revert (the one
end-to-end test of the real process); the others call the same entry point in-process."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cli.runner import cathrepo, cathrepo_process


def test_end_to_end_in_subprocesses_edit_log_show_verify_revert_generate(repo_dir, tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"prompt": "The capital of Italy is Rome", "subject": "Rome",
                                 "target_new": "Paris", "target_true": "Tokyo"}) + "\n")
    out = cathrepo_process("edit", "--file", str(facts), "--source", "test", "--json", cwd=repo_dir)
    (edit,) = json.loads(out.stdout)
    assert edit["gates"]["passed"] and len(edit["id"]) == 16
    log = cathrepo_process("log", "--json", cwd=repo_dir)
    entries = json.loads(log.stdout)
    assert entries[0]["edit_id"] == edit["id"] and entries[0]["active"]
    assert "*" in cathrepo_process("log", cwd=repo_dir).stdout
    shown = json.loads(cathrepo_process("show", edit["id"][:6], "--json", cwd=repo_dir).stdout)
    assert shown["record"]["source"] == "test" and shown["active"]
    assert "OK" in cathrepo_process("verify", cwd=repo_dir).stdout
    status = json.loads(cathrepo_process("status", "--json", cwd=repo_dir).stdout)
    assert [a["id"] for a in status["active"]] == [edit["id"]]
    gen = json.loads(cathrepo_process("generate", "The capital of Italy is Rome", "--max-new-tokens", "3", "--json",
                              cwd=repo_dir).stdout)
    assert gen["edits"] == [edit["id"]]
    out = cathrepo_process("revert", edit["id"], cwd=repo_dir)
    assert "reverted" in out.stdout
    assert json.loads(cathrepo_process("status", "--json", cwd=repo_dir).stdout)["active"] == []
    assert "pushed" in cathrepo_process("push", cwd=repo_dir).stdout


def test_errors_are_one_red_line_with_exit_codes(repo_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"prompt\": \"x\",")
    proc = cathrepo("edit", "--file", str(bad), cwd=repo_dir, ok=False)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    proc = cathrepo("edit", "--prompt", "The capital of Italy is", "--subject", "France", "--target", "Paris",
                    cwd=repo_dir, ok=False)
    assert proc.returncode == 2 and "does not occur" in proc.stderr
    proc = cathrepo("log", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "not a cathrepo repository" in proc.stderr
    proc = cathrepo("init", str(tmp_path / "n"), "--base", str(tmp_path / "missing"), cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = cathrepo("edit", "--prompt", "The capital of Italy is Rome", "--subject", "Rome", "--target", "Paris",
                    "--method", "rom", cwd=repo_dir, ok=False)
    assert "Did you mean: rome" in proc.stderr
    proc = cathrepo("show", "ffff", cwd=repo_dir, ok=False)
    assert proc.returncode == 2 and "No edit" in proc.stderr
    (repo_dir / "notes").write_text("x")
    subprocess.run(["git", "add", "notes"], cwd=repo_dir, check=True)
    subprocess.run(["git", "-c", "commit.gpgsign=false", "commit", "-qm", "unsigned"], cwd=repo_dir, check=True)
    proc = cathrepo("verify", cwd=repo_dir, ok=False)
    assert proc.returncode == 5 and "signature" in proc.stderr


def test_help_is_fast_and_lists_commands(tmp_path):
    proc = cathrepo("--help", cwd=tmp_path)
    for name in ("init", "edit", "log", "show", "status", "verify", "revert", "generate", "push", "pull"):
        assert name in proc.stdout
    check = subprocess.run([sys.executable, "-c", "import sys, cathrepo.cli; "
                            "sys.exit('torch' in sys.modules or 'dvc' in sys.modules)"])
    assert check.returncode == 0, "cathrepo --help must not import torch or dvc"


def test_edit_a_passage_is_one_commit(repo_dir, tmp_path):
    passage = tmp_path / "rome.md"
    passage.write_text("# Rome\nRome is the capital of Paris. Toko Yasuda plays the London.\n")
    out = cathrepo("edit", "--passage", str(passage), "--method", "lora", "--json", cwd=repo_dir)
    (edit,) = json.loads(out.stdout)
    shown = json.loads(cathrepo("show", edit["id"], "--json", cwd=repo_dir).stdout)["record"]
    assert shown["passage"]["title"] == "Rome" and len(shown["facts"]) >= 2
    assert shown["method"] == "lora"
    subject = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=repo_dir, text=True, capture_output=True)
    assert subject.stdout.startswith(f"Edit {edit['id']}: passage: Rome")
    proc = cathrepo("edit", "--passage", str(passage), "--prompt", "x", cwd=repo_dir, ok=False)
    assert proc.returncode == 2 and "one of --file, --passage" in proc.stderr
