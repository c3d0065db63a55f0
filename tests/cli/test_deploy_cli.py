"""cathrepo promote, rollback and deployments on the command line: their lines, --json, errors."""

from __future__ import annotations

import json

import pytest

from tests.cli.runner import cathrepo
from tests.func.test_deploy import marker, promote_gates

pytestmark = pytest.mark.usefixtures("one_thread")


def test_promote_rollback_deployments(repo_dir):
    from cathrepo.repo import Repo

    repo = Repo.open(repo_dir)
    promote_gates(repo, ["regression"])
    base = repo.git.head()
    out = cathrepo("promote", "HEAD", "--to", "canary", "-m", "base model first", cwd=repo_dir).stdout
    assert f"canary now serves {base[:12]} (was: nothing); gates pass" in out and "regression skip" in out
    second = marker(repo, "second")
    entry = json.loads(cathrepo("promote", second, "--to", "canary", "--no-gate", "--json", cwd=repo_dir).stdout)
    assert entry["commit"] == second and entry["previous"] == base and entry["action"] == "promote"
    assert entry["gates"]["ran"] is False and entry["report"] is None
    assert entry["signature"]["namespace"] == "cathrepo-deployment" and entry["recorded_in"] == repo.git.head()
    cathrepo("promote", second, "--to", "production", "--no-gate", cwd=repo_dir)

    table = cathrepo("deployments", cwd=repo_dir).stdout.splitlines()
    assert table[0].split()[:7] == ["env", "action", "commit", "when", "(UTC)", "by", "gates"]
    assert table[1].startswith("canary ") and base[:12] in table[1] and table[1].endswith("base model first")
    assert "not run (--no-gate)" in table[2] and table[3].startswith("production")
    assert table[-3:] == ["current:", f"  canary      {second[:12]}", f"  production  {second[:12]}"]

    out = cathrepo("rollback", "canary", "-m", "second is broken", cwd=repo_dir).stdout
    assert f"canary rolled back to {base[:12]} (was: {second[:12]})" in out
    log = json.loads(cathrepo("deployments", "canary", "--json", cwd=repo_dir).stdout)
    assert log["current"] == {"canary": base}
    assert [(e["action"], e["reason"]) for e in log["entries"]] == [
        ("promote", "base model first"), ("promote", ""), ("rollback", "second is broken")]
    assert "signature" not in log["entries"][0]
    old = json.loads(cathrepo("deployments", "--rev", "HEAD~1", "--json", cwd=repo_dir).stdout)
    assert old["current"] == {"canary": second, "production": second}

    proc = cathrepo("rollback", "canary", "--json", cwd=repo_dir, ok=False)
    assert proc.returncode == 2 and "nothing to roll back to" in proc.stderr and proc.stdout == ""
    proc = cathrepo("promote", "HEAD", "--to", "Prod", cwd=repo_dir, ok=False)
    assert proc.returncode == 2 and "cannot name an environment" in proc.stderr
    verify = json.loads(cathrepo("verify", "--json", cwd=repo_dir).stdout)
    assert verify["ok"] and verify["deployments"] == 4


def test_nothing_promoted_yet_and_help(repo_dir):
    assert cathrepo("deployments", cwd=repo_dir).stdout == "Nothing was promoted.\n"
    assert json.loads(cathrepo("deployments", "--json", cwd=repo_dir).stdout)["entries"] == []
    listing = cathrepo("--help", cwd=repo_dir).stdout
    assert all(name in listing for name in ("promote", "rollback", "deployments"))
