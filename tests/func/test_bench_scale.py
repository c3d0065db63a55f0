"""``cathrepo bench scale``: the synthetic history is a real repository (tiny model, real git, DVC, ssh-keygen)."""

from __future__ import annotations

import subprocess

import pytest
import torch

from cathrepo.bench.scale import RELATIVE_NORM, ScaleBenchConfig, bench_scale, build_history
from cathrepo.delta import applied
from cathrepo.models import get_module
from cathrepo.repo import Repo, layout


def _git(repo: Repo, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo.root, capture_output=True, text=True, check=False)


def test_synthetic_history_is_signed_tracked_and_verifies(tmp_path, tiny_llama):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "scale", base=str(model_dir))
    assert build_history(repo, 4) == 4
    repo = Repo.open(repo.root)
    active = repo.stack().active
    assert len(active) == 4 and len(set(active)) == 4
    # one signed commit per edit on top of init, each accepted by git itself
    shas = _git(repo, "rev-list", "HEAD").stdout.split()
    assert len(shas) == 5
    for sha in shas:
        assert _git(repo, "verify-commit", sha).returncode == 0, sha
    assert [e.action for e in repo.log()][:4] == ["edit"] * 4
    assert _git(repo, "status", "--porcelain").stdout == ""  # work tree and index match HEAD
    assert _git(repo, "for-each-ref", "refs/cathrepo").stdout == ""  # the unsigned build ref is gone
    # weights behind real DVC pointers; records signed; everything verifies
    report = repo.verify()
    assert report.ok, report.issues
    assert report.commits == 5 and report.edits == 4
    record = repo.record(active[-1])
    assert record.method == "synthetic" and record.stack_before["count"] == 3
    assert repo.show(active[2])["commit"] == _git(repo, "rev-parse", "HEAD~1").stdout.strip()
    # the deltas are the small rank-one writes they say they are, and materialize applies all four
    mat = repo.materialize()
    (name,) = mat.edits[0].delta.factors
    mat.applied.remove(mat.model)
    weight = get_module(mat.model, name).weight.detach().clone()
    for e in mat.edits:
        assert float(e.delta.factors[name].full().norm()) == pytest.approx(RELATIVE_NORM * float(weight.norm()), rel=1e-4)
    with applied(mat.model, *(e.delta for e in mat.edits)):
        moved = get_module(mat.model, name).weight.detach() - weight
    assert torch.allclose(moved, sum(e.delta.factors[name].full() for e in mat.edits), atol=1e-7)


def test_extending_and_timing(tmp_path, tiny_llama):
    """A second run extends the same repository (records chain their stack digests); a tampered weight
    object is caught by verify."""
    _, _, model_dir = tiny_llama
    root = tmp_path / "scale"
    first = bench_scale(ScaleBenchConfig(repo=root, n=2, base=str(model_dir), runs=1))
    assert first["edits"] == 2 and first["added"] == 2 and first["verify_ok"]
    out = bench_scale(ScaleBenchConfig(repo=root, n=5, runs=1))
    assert out["added"] == 3 and out["edits"] == 5 and out["commits"] == 6 and out["log_entries"] == 6
    assert out["verify_ok"] and out["materialized_edits"] == 5
    assert out["weights_bytes_per_edit"] < 20_000
    repo = Repo.open(root)
    pointer = repo.git.show_file("HEAD", layout.edit_path(repo.stack().active[3], layout.WEIGHTS_POINTER))
    obj = repo.storage.object_path(repo.storage.read_pointer(pointer)[0])
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\x00")
    issues = [str(i) for i in repo.verify().issues]
    assert len(issues) == 1 and repo.stack().active[3] in issues[0] and "sha256" in issues[0]
