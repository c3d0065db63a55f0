"""The resident worker, driven as a user drives it: ``cathrepo worker start`` in the background, model
commands as real ``python -m cathrepo`` processes that hand themselves to it, then ``worker stop``.

The worker is always a subprocess: forking the test process (which has run torch) would be what the
worker itself must never do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.runner import cathrepo


def _run(*args: str, cwd: Path, env: dict[str, str], worker: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cathrepo", *args], cwd=cwd, text=True, capture_output=True,
                          env={**env, "CATHREPO_WORKER": "1" if worker else "0"}, timeout=300)


def _status(cwd: Path, env: dict[str, str]) -> dict:
    return json.loads(_run("worker", "status", "--json", cwd=cwd, env=env).stdout)


@pytest.fixture
def worker_env(tmp_path, monkeypatch):
    """A socket of this test's own (the short /tmp path keeps it under the 108-byte limit of socket names)."""
    import tempfile

    sockets = Path(tempfile.mkdtemp(prefix="cw-", dir="/tmp"))
    monkeypatch.setenv("CATHREPO_WORKER_SOCKET", str(sockets / "w.sock"))
    env = dict(os.environ)
    yield env
    subprocess.run([sys.executable, "-m", "cathrepo", "worker", "stop"], env=env, capture_output=True, timeout=60)
    for path in sockets.iterdir():
        path.unlink()
    sockets.rmdir()


def test_a_model_command_runs_in_the_worker_with_the_same_output_and_exit_codes(tmp_path, tiny_llama, worker_env):
    _, _, model_dir = tiny_llama
    cathrepo("init", str(tmp_path / "r"), "--base", str(model_dir), cwd=tmp_path)
    repo = tmp_path / "r"

    started = _run("worker", "start", cwd=repo, env=worker_env)  # the repository's base, preloaded
    assert started.returncode == 0, started.stderr
    assert "ready" in started.stdout and model_dir.name in started.stdout
    assert _status(repo, worker_env)["served"] == 0

    here = _run("generate", "The Eiffel Tower is in", "--json", cwd=repo, env=worker_env, worker=False)
    there = _run("generate", "The Eiffel Tower is in", "--json", cwd=repo, env=worker_env)
    assert there.returncode == here.returncode == 0, there.stderr
    assert json.loads(there.stdout) == json.loads(here.stdout)
    assert there.stderr == here.stderr  # no log line of the worker's, nothing the worker's set-up turned on
    state = _status(repo, worker_env)
    assert state["served"] == 1 and state["fresh"] and state["preloaded"] == [model_dir.name]

    # a failing command: the same exit code and error line, from the worker's process
    bad_here = _run("generate", "x", "--rev", "no-such-rev", cwd=repo, env=worker_env, worker=False)
    bad_there = _run("generate", "x", "--rev", "no-such-rev", cwd=repo, env=worker_env)
    assert bad_here.returncode != 0 and bad_there.returncode == bad_here.returncode
    assert bad_there.stderr == bad_here.stderr and "no-such-rev" in bad_there.stderr
    assert _status(repo, worker_env)["served"] == 2

    # commands that load no model, and the worker command itself, never go to it
    assert _run("log", cwd=repo, env=worker_env).returncode == 0
    assert _status(repo, worker_env)["served"] == 2

    stopped = _run("worker", "stop", cwd=repo, env=worker_env)
    assert "stopped" in stopped.stdout
    assert not Path(worker_env["CATHREPO_WORKER_SOCKET"]).exists()
    assert "no worker is running" in _run("worker", "status", cwd=repo, env=worker_env).stdout
    # with no worker, the command runs here as before
    assert json.loads(_run("generate", "The Eiffel Tower is in", "--json", cwd=repo,
                           env=worker_env).stdout) == json.loads(here.stdout)


def test_a_worker_running_other_code_is_not_used(tmp_path, worker_env, monkeypatch, capsys):
    from cathrepo.cli import worker

    started = _run("worker", "start", "--no-model", "--idle-timeout", "120", cwd=tmp_path, env=worker_env)
    assert started.returncode == 0, started.stderr
    assert "no model" in started.stdout
    monkeypatch.setattr(worker, "fingerprint", lambda: "edited-since")  # as after a change to the checkout
    assert worker.forward(["generate", "x"]) is None  # the caller runs it itself
    assert "runs other code" in capsys.readouterr().err
    assert worker.status()["fresh"] is False
    assert worker.forward(["log"]) is None  # not a model command: never sent


def test_no_worker_costs_nothing_and_a_dead_workers_socket_is_ignored(tmp_path, worker_env):
    from cathrepo.cli import worker

    assert worker.forward(["generate", "x"]) is None
    path = Path(worker_env["CATHREPO_WORKER_SOCKET"])
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:  # bound, never listening: a dead worker
        left.bind(str(path))
    assert worker.forward(["generate", "x"]) is None
    assert worker.status() is None


def test_the_subcommand_is_found_after_the_groups_options():
    from cathrepo.cli.worker import _command

    assert _command(["-C", "some/dir", "-v", "edit", "--prompt", "p"]) == "edit"
    assert _command(["--traceback", "generate", "x"]) == "generate"
    assert _command(["-C", "edit"]) is None


def test_the_worker_preloads_without_running_the_command_line(monkeypatch):
    """Preloading imports every cathrepo module but ``cathrepo.__main__`` (which would start a second
    command line, and a worker inside the worker)."""
    from cathrepo.cli import worker_server

    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name: imported.append(name))
    worker_server._preload([])  # no base model: nothing is loaded
    assert "cathrepo.cli.commands.edit" in imported and "cathrepo.repo" in imported
    assert not [name for name in imported if name.endswith("__main__")]
    assert {"dvc.repo", "git"} <= set(imported)  # what a commit imports lazily is loaded once too
