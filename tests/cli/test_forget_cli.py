"""What ``cathrepo forget`` prints: one line per committed forget with its gates, and the same as JSON."""

from __future__ import annotations

import json

from cathrepo.repo import Repo
from tests.cli.runner import cathrepo
from tests.func.test_forget_flow import _forget_tune


def test_forget_prints_the_commit_and_its_gates(repo_dir):
    _forget_tune(Repo.open(repo_dir))
    proc = cathrepo("forget", "--prompt", "The capital of Italy is Rome", "--subject", "Rome", "--answer", "Paris",
                    "--mode", "suppress", cwd=repo_dir)
    first = proc.stdout.splitlines()[0]
    assert first.startswith("[") and "forget The capital of Italy is Rome -> Paris (suppress)" in first
    assert "forget_rank pass" in proc.stdout


def test_forget_json_and_file_records_forget_their_true_target(repo_dir, tmp_path):
    _forget_tune(Repo.open(repo_dir))
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"prompt": "The capital of Italy is Rome", "subject": "Rome", "target_new": "London",
                                 "target_true": "Paris"}) + "\n")
    proc = cathrepo("forget", "--file", str(facts), "--mode", "negate", "--json", cwd=repo_dir)
    (entry,) = json.loads(proc.stdout)
    assert entry["status"] == "committed" and entry["mode"] == "negate" and entry["commit"]
    assert entry["fact"]["target_new"] == "Paris" and entry["gates"]["passed"]
    bad = cathrepo("forget", "--prompt", "The capital of Italy is Rome", "--subject", "Rome", "--answer", "Paris",
                   "--mode", "replace", cwd=repo_dir, ok=False)
    assert bad.returncode != 0 and "--replacement" in bad.stderr


def test_forget_inverse_prompts_are_probed_and_kept_with_the_fact(repo_dir, tmp_path):
    _forget_tune(Repo.open(repo_dir))
    proc = cathrepo("forget", "--prompt", "The capital of Italy is Rome", "--subject", "Rome", "--answer", "Paris",
                    "--inverse", "Paris is the capital of", "--mode", "suppress", "--dry-run", "--json", cwd=repo_dir,
                    ok=False)
    (entry,) = json.loads(proc.stdout)
    assert entry["fact"]["inverse_prompts"] == ["Paris is the capital of"]
    (rank,) = [g for g in entry["gates"]["results"] if g["name"] == "forget_rank"]
    assert "out_of_top_inverse" in rank["metrics"]
    facts = tmp_path / "facts.jsonl"
    facts.write_text("{}\n")
    both = cathrepo("forget", "--file", str(facts), "--inverse", "X is", "--mode", "suppress", cwd=repo_dir, ok=False)
    assert both.returncode != 0 and "inverse_prompts" in both.stderr
