"""``cathrepo propose`` and ``cathrepo ci`` through the real command line."""

from __future__ import annotations

import json

from cathrepo.repo import Repo
from tests.cli.runner import cathrepo
from tests.func.test_ci import _merge_gates


def test_propose_then_ci_prints_markdown_json_and_a_job_summary(repo_dir, tmp_path):
    repo = Repo.open(repo_dir)
    _merge_gates(repo, ["efficacy", "regression"])
    repo.git.run(["checkout", "-q", "-b", "facts"])
    out = cathrepo("propose", "--prompt", "The capital of Italy is Rome", "--subject", "Rome", "--target", "Paris",
                   "--source", "ticket-7", cwd=repo_dir)
    assert "proposed: The capital of Italy is Rome -> Paris (risk low)" in out.stdout
    pid = out.stdout.split("]")[0].lstrip("[")
    dup = cathrepo("propose", "--prompt", "The capital of Italy is Rome", "--subject", "Rome", "--target", "Paris",
                   cwd=repo_dir, ok=False)
    assert dup.returncode != 0 and "already proposed" in dup.stderr

    summary = tmp_path / "summary.md"
    run = cathrepo("ci", "--base", "main", "--summary", str(summary), cwd=repo_dir)
    assert run.stdout.startswith("## cathrepo ci: passed")
    assert f"| `{pid}` | The capital of Italy is Rome -> Paris | passed |" in run.stdout
    assert "| efficacy | pass |" in run.stdout and "### Merge gates" in run.stdout
    assert summary.read_text() == run.stdout

    run = cathrepo("ci", "--base", "main", "--commit", "--json", cwd=repo_dir)
    data = json.loads(run.stdout)
    assert data["passed"] and data["proposals"][0]["status"] == "committed"
    assert data["union"] == [data["proposals"][0]["edit"]]
    assert repo.stack("HEAD").active == (data["proposals"][0]["edit"],)


def test_ci_fails_with_exit_4_and_names_the_issue(repo_dir):
    repo = Repo.open(repo_dir)
    repo.git.run(["checkout", "-q", "-b", "facts"])
    (repo_dir / "notes.txt").write_text("unsigned\n")
    repo.git.add(["notes.txt"])
    repo.git.run(["-c", "commit.gpgsign=false", "commit", "-q", "-m", "unsigned"])
    run = cathrepo("ci", cwd=repo_dir, ok=False)
    assert run.returncode == 4
    assert "## cathrepo ci: FAILED" in run.stdout and "signature does not verify" in run.stdout
    assert "does not pass into main" in run.stderr
