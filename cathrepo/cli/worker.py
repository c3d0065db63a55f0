"""The resident worker: torch, transformers and the base model loaded once, a fresh process per command.

A ``cathrepo`` command that computes on a model spends about 9 s importing torch and transformers and
loading the weights before any work (BENCHMARKS.md). ``cathrepo worker start`` keeps a process that has
done that; while it runs, ``cathrepo edit`` (and the other model commands) hand their arguments, working
directory, environment and terminal (stdin, stdout and stderr, passed as file descriptors over a Unix
socket) to it. The worker forks a child per command, the child runs the ordinary command line with the
client's terminal as its own and reports the exit code, and the client exits with it: output, exit
codes, prompts and Ctrl-C behave as if the command ran in the client. Every command runs in a process
of its own, so nothing one command does to the model is seen by the next.

The worker never computes before it forks: a fork taken after torch's OpenMP thread pool started would
hang in the child. A worker whose cathrepo code or Python differs from the client's is not used (the
client runs the command itself and says so). ``CATHREPO_WORKER=0`` keeps a command out of the worker.

This module is what every command line imports (the socket, the messages, the client) and starts and
stops workers; the server side is :mod:`cathrepo.cli.worker_server`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cathrepo
from cathrepo import __version__
from cathrepo.files import user_dir

#: Commands that load a model and therefore gain from the worker (the others start in well under a second).
FORWARDED = frozenset({"edit", "revert", "gate", "generate", "explain", "trace", "bench"})
_HEADER = struct.Struct("!I")  # every message: its length, then UTF-8 JSON


def socket_path() -> Path:
    """``CATHREPO_WORKER_SOCKET``, else ``worker.sock`` in cathrepo's per-user data directory.

    A socket's name is limited to about 100 bytes; a longer one is replaced by a name derived from it
    in a directory of the user's own under /tmp.
    """
    explicit = os.environ.get("CATHREPO_WORKER_SOCKET")
    path = Path(explicit).expanduser() if explicit else user_dir("data") / "worker" / "worker.sock"
    if len(os.fsencode(str(path.absolute()))) < 100:
        return path
    short = Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()) / f"cathrepo-{os.getuid()}"
    return short / (hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:16] + ".sock")


def fingerprint() -> str:
    """The code a command would run: the interpreter, cathrepo's version and every module's size and
    mtime (an edited checkout or an upgrade makes a running worker stale)."""
    root = Path(cathrepo.__file__).parent
    digest = hashlib.sha256(f"{sys.executable}\0{sys.prefix}\0{__version__}".encode())
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]


# --- messages ---------------------------------------------------------------------------------------


def send(conn: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    packet = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(conn, [packet[:_HEADER.size]], list(fds))
        conn.sendall(packet[_HEADER.size:])
    else:
        conn.sendall(packet)


def receive(conn: socket.socket, with_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message (None when the peer closed), and the file descriptors sent with its first bytes."""
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, with_fds)
    else:
        head = conn.recv(_HEADER.size)
    head += _read(conn, _HEADER.size - len(head)) if head else b""
    if len(head) < _HEADER.size:
        return None, fds
    body = _read(conn, _HEADER.unpack(head)[0])
    return json.loads(body), fds


def _read(conn: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = conn.recv(min(n, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def ask(message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
    """Send a control message (status, stop) to the worker; None when no worker answers."""
    path = socket_path()
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            send(conn, message)
            return receive(conn)[0]
    except OSError:
        return None


# --- the client -------------------------------------------------------------------------------------


def forward(args: Sequence[str]) -> int | None:
    """Run ``cathrepo ARGS`` in the worker with this process's terminal; its exit code, or None when
    there is no fresh worker to run it (the caller then runs the command itself)."""
    if os.environ.get("CATHREPO_WORKER", "1") == "0" or _command(args) not in FORWARDED:
        return None
    path = socket_path()
    if not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10.0)  # a worker that does not take the command within seconds is not waited for
    try:
        conn.connect(str(path))
        send(conn, {"op": "run", "args": list(args), "cwd": os.getcwd(), "env": dict(os.environ),
                    "fingerprint": fingerprint(), "encoding": sys.stdout.encoding or "utf-8"},
             fds=[0, 1, 2])
        first, _ = receive(conn)
    except (OSError, ValueError):
        conn.close()
        return None  # a socket left by a worker that died: run here
    if first is None or "pid" not in first:
        conn.close()
        why = "runs other code" if first and "stale" in first else "did not take the command"
        print(f"cathrepo: the worker ({path}) {why}; running here. Restart it with 'cathrepo worker start'.",
              file=sys.stderr)
        return None
    conn.settimeout(None)
    return _wait(conn, int(first["pid"]))


def _command(args: Sequence[str]) -> str | None:
    """The subcommand name in ``args`` (after the group's own options)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "-C":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _wait(conn: socket.socket, pid: int) -> int:
    """Relay Ctrl-C and termination to the command's process until it reports its exit code."""
    def relay(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, relay) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                message, _ = receive(conn)
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        conn.close()
    if message is None:
        print("cathrepo: the worker's process for this command ended without an exit code.", file=sys.stderr)
        return 1
    return int(message["exit"])


def private(path: Path) -> Path:
    """``path`` after making its directory, which must belong to this user alone."""
    from cathrepo.exceptions import CathrepoError

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.parent.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise CathrepoError(f"The worker's directory {path.parent} is writable by other users.",
                            hint="Set CATHREPO_WORKER_SOCKET to a path in a directory of your own.")
    return path


# --- starting and stopping ---------------------------------------------------------------------------


def status() -> dict[str, Any] | None:
    """The running worker's state, with ``fresh`` (it runs this code); None when none answers."""
    found = ask({"op": "status"})
    if found is not None:
        found["fresh"] = found.get("fingerprint") == fingerprint()
    return found


def stop(timeout: float = 30.0) -> int | None:
    """Stop the running worker (commands it is running finish); its pid, or None when none ran."""
    answer = ask({"op": "stop"})
    if answer is None:
        return None
    pid = int(answer["stopping"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(bases: Sequence[str], idle_timeout: float, wait: float = 300.0) -> dict[str, Any]:
    """Start a worker in the background (a running one is stopped first) and wait until it answers."""
    import subprocess

    from cathrepo.exceptions import CathrepoError

    stop()
    path = private(socket_path())
    logfile = path.with_suffix(".log")
    args = [sys.executable, "-m", "cathrepo", "worker", "start", "--foreground", "--idle-timeout", str(idle_timeout)]
    args += [item for base in bases for item in ("--base", base)] or ["--no-model"]
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                env={**os.environ, "CATHREPO_WORKER": "0"})
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = status()
        if found is not None and found.get("pid") == proc.pid:
            found["log"] = str(logfile)
            return found
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace").strip().splitlines()[-5:]
            raise CathrepoError(f"The worker exited while starting (exit {proc.returncode}): "
                                + " | ".join(tail), hint=f"Its log is {logfile}.")
        time.sleep(0.2)
    proc.terminate()
    raise CathrepoError(f"The worker did not answer within {wait:.0f} s.", hint=f"Its log is {logfile}.")
