"""The CI job ``cathrepo init`` writes, run for real on a laptop: the workflow calls one script, the script
pulls the weights from the DVC remote, verifies, checks the new commits as pre-push does and gates (the
install step skipped); the wheel it would install is a working cathrepo that carries the hook scripts."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import cathrepo
from cathrepo.config import dump_config, load_config
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo, layout
from cathrepo.repo.hooks import HOOK_NAMES, template
from cathrepo.repo.workflow import CI_SCRIPT, WHEEL_DIR, WORKFLOW
from tests.func.test_repo_flow import FACT, _tune

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus) -> Repo:
    repo = Repo.init(tmp_path / "edits", base=str(tiny_llama[2]))
    _tune(repo, corpus)
    return repo


def _shims(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``python`` and ``cathrepo`` are this interpreter and this checkout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, line in (("python", f'exec "{sys.executable}" "$@"'),
                       ("cathrepo", f'exec "{sys.executable}" -m cathrepo "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{line}\n")
        (bin_dir / name).chmod(0o755)
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "CATHREPO_SKIP_INSTALL": "1",
            "CATHREPO_WORKER": "0"}


def test_init_writes_a_workflow_that_calls_one_script_and_pins_what_it_installs(repo):
    workflow = (repo.root / WORKFLOW).read_text()
    assert "run: sh .github/cathrepo-ci.sh" in workflow and "pip install" not in workflow
    assert os.access(repo.root / CI_SCRIPT, os.X_OK)
    ci = repo.config.ci
    assert ci.cathrepo_version == cathrepo.__version__ and ci.torch.startswith("torch==")
    assert ci.model == ""  # the tiny model is a directory, not an embedded package
    wheel = f"{WHEEL_DIR}/cathrepo-{cathrepo.__version__}-py3-none-any.whl"
    assert ci.install == f"./{wheel}"
    assert wheel in repo.git.list_files("HEAD", WHEEL_DIR)


def test_the_ci_script_runs_locally(repo, tmp_path):
    """Everything but the install, for real: pull from the local DVC remote (the cache emptied first),
    verify, the pre-push check of the commits after CATHREPO_BASE, the gates on the tiny model."""
    config = load_config(repo.root / layout.CONFIG)
    stages = {**config.gates["stages"], "revision": ["efficacy", "regression"], "merge": ["efficacy", "regression"]}
    (repo.root / layout.CONFIG).write_text(dump_config(dataclasses.replace(config, gates={**config.gates,
                                                                                         "stages": stages})))
    repo.git.add([layout.CONFIG])
    repo.git.commit("Revision gates for a tiny model")
    base = repo.git.head()
    (outcome,) = repo.edit([EditRequest(FACT)])
    assert repo.push() >= 1
    pointer = (repo.root / layout.edit_path(outcome.edit_id, layout.WEIGHTS_POINTER)).read_bytes()
    cached = repo.storage.object_path(repo.storage.read_pointer(pointer)[0])
    cached.unlink()
    env = {**_shims(tmp_path), "CATHREPO_BASE": base}
    proc = subprocess.run(["sh", CI_SCRIPT], cwd=repo.root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("== pull", "== verify", "== the new commits", "== cathrepo ci"):
        assert step in proc.stdout
    assert "== install" not in proc.stdout
    assert cached.is_file(), "cathrepo pull fetched the weights from the remote"
    report = (repo.root / "gate-report.md").read_text()
    assert report.startswith("## cathrepo ci: passed") and "| efficacy |" in report and report in proc.stdout
    assert "1 new to" in report  # the branch's edit, gated as the merge into the base would hold it

    # a push to main (no base commit): the revision's own gates
    no_base = {k: v for k, v in env.items() if k != "CATHREPO_BASE"}
    proc = subprocess.run(["sh", CI_SCRIPT], cwd=repo.root, env=no_base, capture_output=True, text=True)
    assert proc.returncode == 0 and "== gates of the revision" in proc.stdout, proc.stdout + proc.stderr

    # an unsigned commit after the base fails the job at the pre-push check, naming the commit
    (repo.root / "gate-report.md").unlink()
    (repo.root / "notes.txt").write_text("hello\n")
    repo.git.add(["notes.txt"])
    repo.git.run(["-c", "commit.gpgsign=false", "commit", "-q", "-m", "unsigned"])
    proc = subprocess.run(["sh", CI_SCRIPT], cwd=repo.root, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "signature" in proc.stderr
    assert "== cathrepo ci" not in proc.stdout


def test_the_wheel_in_the_repository_installs_a_cathrepo_with_its_hooks(repo, tmp_path):
    wheel = repo.root / repo.config.ci.install
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"cathrepo/data/hooks/{name}" for name in HOOK_NAMES} <= names
        assert not any("__pycache__" in n for n in names)
        assert archive.read(f"cathrepo-{cathrepo.__version__}.dist-info/entry_points.txt").startswith(
            b"[console_scripts]")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True)
    proc = subprocess.run([sys.executable, "-c", "import cathrepo, sys; from cathrepo.repo.hooks import template; "
                           "print(cathrepo.__file__); sys.stdout.write(template('pre-push'))"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(target)) and proc.stdout.endswith(template("pre-push"))
