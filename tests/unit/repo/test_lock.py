"""The repository lock: exclusive across processes, stale locks taken over, clear messages."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cathrepo.exceptions import LockError, NotARepositoryError
from cathrepo.repo.lock import RepoLock, git_dir

HOLDER = """
import sys
from cathrepo.repo.lock import RepoLock
lock = RepoLock(sys.argv[1], command="cathrepo edit --fact x")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes stdin, then exit without releasing
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


@pytest.fixture
def holder(repo):
    """Another process that holds the lock until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(repo)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.stdin.close()
        proc.wait(timeout=10)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_file_records_the_holder_and_is_removed(repo):
    with RepoLock(repo, command="cathrepo revert e1") as lock:
        assert lock.held and lock.path == repo / ".git" / "cathrepo.lock"
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and record["hostname"] == socket.gethostname()
        assert record["command"] == "cathrepo revert e1"
    assert not lock.path.exists() and not lock.held


def test_lock_is_released_when_the_body_raises(repo):
    with pytest.raises(RuntimeError), RepoLock(repo) as lock:
        raise RuntimeError("the verb failed")
    assert not lock.path.exists()


def test_contention_names_the_holder(repo, holder):
    with pytest.raises(LockError) as info:
        RepoLock(repo).acquire()
    message = str(info.value)
    assert f"pid {holder.pid}" in message and "cathrepo edit --fact x" in message
    assert f"rm {repo / '.git' / 'cathrepo.lock'}" in message


def test_a_crashed_holder_is_taken_over(repo, holder, caplog):
    holder.stdin.close()
    holder.wait(timeout=10)
    assert (repo / ".git" / "cathrepo.lock").exists(), "the holder exited without releasing"
    with caplog.at_level(logging.WARNING, logger="cathrepo.repo.lock"), RepoLock(repo) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert "stale" in caplog.text and str(holder.pid) in caplog.text


def test_stale_lock_from_a_dead_pid(repo):
    path = repo / ".git" / "cathrepo.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "hostname": socket.gethostname(), "command": "x"}))
    with RepoLock(repo):
        pass
    assert not path.exists()


def test_another_hosts_lock_is_not_taken_over(repo):
    path = repo / ".git" / "cathrepo.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "hostname": "elsewhere.example", "command": "x"}))
    with pytest.raises(LockError, match="on elsewhere.example"):
        RepoLock(repo).acquire()
    assert path.exists()


def test_double_acquire_is_a_clear_error(repo):
    lock = RepoLock(repo)
    with lock:
        with pytest.raises(LockError, match="already holds"):
            lock.acquire()
        with pytest.raises(LockError, match="already holds"):
            RepoLock(repo).acquire()
    assert not lock.path.exists()


def test_wait_for_the_holder(repo, holder):
    import threading

    def finish() -> None:
        holder.stdin.close()
        holder.wait()  # reaped, so its pid is really gone (a zombie still answers kill(pid, 0))

    threading.Timer(0.3, finish).start()
    with RepoLock(repo, wait=10.0) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_linked_work_tree_locks_its_own_git_dir(repo, tmp_path):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    subprocess.run(["git", "-C", str(repo), "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty",
                    "-m", "root"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", str(tmp_path / "wt")], check=True)
    assert git_dir(tmp_path / "wt") == repo / ".git" / "worktrees" / "wt"
    with RepoLock(tmp_path / "wt") as linked, RepoLock(repo) as main:  # both at once: no contention
        assert linked.path == repo / ".git" / "worktrees" / "wt" / "cathrepo.lock" and linked.path.exists()
        assert main.path == repo / ".git" / "cathrepo.lock" and main.path.exists()


def test_not_a_repository(tmp_path):
    with pytest.raises(NotARepositoryError):
        RepoLock(tmp_path)


def test_locked_verbs_nest_on_one_repo_and_release(repo):
    from cathrepo.repo import Repo
    from cathrepo.repo.lock import LOCK_NAME, locked

    handle = Repo(repo)
    seen: list[bool] = []

    @locked("inner")
    def inner(r: Repo) -> None:
        seen.append(r.holds_lock)
        with pytest.raises(LockError):  # another process (or object) is still shut out
            RepoLock(repo).acquire()

    @locked("outer")
    def outer(r: Repo) -> None:
        seen.append(r.holds_lock)
        inner(r)  # re-entrant: no second acquisition, no LockError
        seen.append(r.holds_lock)
        raise RuntimeError("fail inside the verb")

    with pytest.raises(RuntimeError):
        outer(handle)
    assert seen == [True, True, True]
    assert not handle.holds_lock and not (git_dir(repo) / LOCK_NAME).exists()
