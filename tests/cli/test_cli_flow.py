"""The real command line on a tiny model: every verb of the edit repository, exit codes and error lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.func.test_repo_flow import _tune


def cathrepo(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "cathrepo", *args], cwd=cwd, text=True, capture_output=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def repo_dir(tmp_path, tiny_llama):
    from cathrepo.repo import Repo

    _, _, model_dir = tiny_llama
    out = cathrepo("init", str(tmp_path / "r"), "--base", str(model_dir), cwd=tmp_path)
    assert "Initialised cathrepo repository" in out.stdout
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["The city of Paris is in France.", "Rome is the capital of Italy."] * 40))
    _tune(Repo.open(tmp_path / "r"), corpus)
    return tmp_path / "r"


def test_edit_log_show_verify_revert_generate(repo_dir, tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"prompt": "The capital of Italy is Rome", "subject": "Rome",
                                 "target_new": "Paris", "target_true": "Tokyo"}) + "\n")
    out = cathrepo("edit", "--file", str(facts), "--source", "test", "--json", cwd=repo_dir)
    (edit,) = json.loads(out.stdout)
    assert edit["gates"]["passed"] and len(edit["id"]) == 16
    log = cathrepo("log", "--json", cwd=repo_dir)
    entries = json.loads(log.stdout)
    assert entries[0]["edit_id"] == edit["id"] and entries[0]["active"]
    assert "*" in cathrepo("log", cwd=repo_dir).stdout
    shown = json.loads(cathrepo("show", edit["id"][:6], "--json", cwd=repo_dir).stdout)
    assert shown["record"]["source"] == "test" and shown["active"]
    assert "OK" in cathrepo("verify", cwd=repo_dir).stdout
    status = json.loads(cathrepo("status", "--json", cwd=repo_dir).stdout)
    assert [a["id"] for a in status["active"]] == [edit["id"]]
    gen = json.loads(cathrepo("generate", "The capital of Italy is Rome", "--max-new-tokens", "3", "--json",
                              cwd=repo_dir).stdout)
    assert gen["edits"] == [edit["id"]]
    out = cathrepo("revert", edit["id"], cwd=repo_dir)
    assert "reverted" in out.stdout
    assert json.loads(cathrepo("status", "--json", cwd=repo_dir).stdout)["active"] == []
    assert "pushed" in cathrepo("push", cwd=repo_dir).stdout


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
