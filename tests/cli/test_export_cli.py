"""``cathrepo export`` on the command line: its one-line report, ``--json``, and a refused OUT."""

from __future__ import annotations

import json

from cathrepo.repo import Repo
from tests.cli.runner import cathrepo
from tests.func.test_repo_flow import FACT


def test_export_prints_and_writes_json(repo_dir, tmp_path):
    from cathrepo.facts.schema import EditRequest

    Repo.open(repo_dir).edit([EditRequest(FACT)])
    out = cathrepo("export", str(tmp_path / "adapter"), cwd=repo_dir)
    assert "PEFT adapter, rank 1 at most (cat) of 1 edit(s)" in out.stdout
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    ranked = cathrepo("export", str(tmp_path / "r1"), "--rank", "1", "--json", cwd=repo_dir)
    data = json.loads(ranked.stdout)
    assert data["rank"] == 1 and data["strategy"] == "svd:1" and data["format"] == "peft"
    assert data["out"] == str((tmp_path / "r1").resolve()) and len(data["edits"]) == 1
    assert data["base_model"]["hub_id"] == json.loads(
        (tmp_path / "r1" / "adapter_config.json").read_text())["base_model_name_or_path"]
    refused = cathrepo("export", str(tmp_path / "adapter"), cwd=repo_dir, ok=False)
    assert refused.returncode != 0 and "already exists" in refused.stderr and "--force" in refused.stderr
    merged = cathrepo("export", "--format", "merged", str(tmp_path / "m"), cwd=repo_dir)
    assert "merged model of 1 edit(s)" in merged.stdout and (tmp_path / "m" / "config.json").is_file()
