"""The repository lock: one writing cathrepo command per repository at a time.

Every writing verb (edit, commit, revert, merge, promote) holds it, so two of them never interleave
their git index and DVC cache changes. The lock is a file in the git directory, created with
``O_CREAT | O_EXCL`` (atomic on local file systems), holding who took it: pid, host, command and time.
A lock whose process no longer runs on this host is stale (a crashed command) and is taken over with a
warning; takeovers are serialised with ``flock`` so two processes cannot both take over the same one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from cathrepo.exceptions import LockError, NotARepositoryError

log = logging.getLogger(__name__)

LOCK_NAME = "cathrepo.lock"


def git_dir(root: Path) -> Path:
    """The git directory of the work tree ``root`` (``.git``, or where a ``.git`` file points)."""
    dot_git = Path(root) / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():
        text = dot_git.read_text(encoding="utf-8").strip()
        if text.startswith("gitdir:"):
            target = Path(text.removeprefix("gitdir:").strip())
            return target if target.is_absolute() else (Path(root) / target).resolve()
    raise NotARepositoryError(f"{root} is not a git work tree, so it cannot be locked.",
                              hint="Run 'cathrepo init' there first.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class RepoLock:
    """An exclusive, non-reentrant lock on one repository; use it as a context manager.

    Args:
        root: the repository's work tree.
        command: what the holder is doing, shown to anyone who finds the lock taken
            (defaults to this process's command line).
        wait: seconds to keep retrying while another live process holds the lock (0: fail at once).

    Raises:
        LockError: on entry, when another process holds the lock or this object already holds it.
    """

    def __init__(self, root: Path, *, command: str | None = None, wait: float = 0.0) -> None:
        self.path = git_dir(Path(root)) / LOCK_NAME
        self.command = command if command is not None else " ".join(
            [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"])
        self.wait = wait
        self._token: str | None = None

    @property
    def held(self) -> bool:
        return self._token is not None

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; raise LockError when it is held."""
        if self._token is not None:
            raise LockError(f"This process already holds the repository lock {self.path}.",
                            hint="Do not nest writing verbs; the lock is not re-entrant.")
        deadline = time.monotonic() + self.wait
        while True:
            token = uuid.uuid4().hex
            if self._create(token):
                self._token = token
                return
            holder = self._read()
            if holder is not None and self._is_stale(holder) and self._take_over(holder):
                continue
            if time.monotonic() >= deadline:
                raise self._held_error(holder)
            time.sleep(0.1)

    def release(self) -> None:
        """Give the lock back (only if the file is still ours)."""
        if self._token is None:
            return
        holder = self._read()
        if holder is not None and holder.get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            log.warning("The repository lock %s was removed or replaced while held.", self.path)
        self._token = None

    def __enter__(self) -> RepoLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # --- internals -------------------------------------------------------------------------------

    def _create(self, token: str) -> bool:
        record = {"pid": os.getpid(), "hostname": socket.gethostname(), "command": self.command,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _read(self) -> dict[str, Any] | None:
        """The holder's record; {} for an unreadable (half-written) file; None if the lock vanished."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        if holder.get("hostname") != socket.gethostname() or not isinstance(pid, int):
            return False  # another host's process (or a file being written) cannot be checked
        return pid != os.getpid() and not _pid_alive(pid)

    def _take_over(self, holder: dict[str, Any]) -> bool:
        """Remove the stale lock ``holder`` if it is still the one in place; True when removed."""
        import fcntl

        guard = self.path.with_name(LOCK_NAME + ".guard")
        with open(guard, "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                current = self._read()
                if current is None:
                    return True  # gone already: just try to create it again
                if current.get("token") != holder.get("token") or not self._is_stale(current):
                    return False
                log.warning("Taking over a stale repository lock %s left by pid %s (%s), which is no "
                            "longer running.", self.path, holder.get("pid"), holder.get("command", "?"))
                self.path.unlink()
                return True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _held_error(self, holder: dict[str, Any] | None) -> LockError:
        if holder and holder.get("pid") == os.getpid() and holder.get("hostname") == socket.gethostname():
            return LockError(f"This process already holds the repository lock {self.path}.",
                             hint="Do not nest writing verbs; the lock is not re-entrant.")
        if not holder:
            who = "another cathrepo process"
        else:
            who = (f"pid {holder.get('pid')} on {holder.get('hostname')} running "
                   f"'{holder.get('command', '?')}' since {holder.get('created', '?')}")
        return LockError(
            f"The repository is locked by {who}.",
            hint=f"Wait for it to finish. If no such process is running, remove the stale lock: rm {self.path}",
        )


_Verb = TypeVar("_Verb", bound=Callable[..., Any])


def locked(command: str) -> Callable[[_Verb], _Verb]:
    """Decorator for a writing verb whose first argument is a :class:`~cathrepo.repo.Repo`: the verb runs
    holding that repository's lock. Re-entrant per ``Repo`` object (like DVC's ``@locked``), so a verb
    that calls another locked one (``edit`` committing through ``commit_edit``) takes the lock once."""

    def decorate(verb: _Verb) -> _Verb:
        @functools.wraps(verb)
        def run_locked(repo: Any, *args: Any, **kwargs: Any) -> Any:
            with repo.locked(command):
                return verb(repo, *args, **kwargs)

        return cast(_Verb, run_locked)

    return decorate
