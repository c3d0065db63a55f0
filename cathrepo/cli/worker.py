"""The resident worker: torch, transformers and the base model loaded once, a fresh process per command.

A ``cathrepo`` command that computes on a model spends about 8 s importing torch and transformers and
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
"""

from __future__ import annotations

import hashlib
import json
import logging
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

log = logging.getLogger(__name__)

#: Commands that load a model and therefore gain from the worker (the others start in well under a second).
FORWARDED = frozenset({"edit", "revert", "gate", "generate", "trace", "bench"})
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


# --- the server -------------------------------------------------------------------------------------


def serve(bases: Sequence[str], idle_timeout: float) -> None:
    """Preload, listen on :func:`socket_path` and fork one child per command until stopped or idle."""
    from cathrepo.cli import quiet_libraries

    quiet_libraries()  # before transformers is imported: its progress bars read the environment then
    _log_to_stderr(True)
    started = time.monotonic()
    preloaded = _preload(bases)
    path = _private(socket_path())
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o600)
    inode = path.stat().st_ino
    server.listen(16)
    server.settimeout(1.0)
    state: dict[str, Any] = {"pid": os.getpid(), "version": __version__, "fingerprint": fingerprint(),
                             "socket": str(path), "preloaded": preloaded, "served": 0,
                             "load_s": round(time.monotonic() - started, 2), "children": set(), "stop": False}
    signal.signal(signal.SIGTERM, lambda *_: state.update(stop=True))
    log.info("worker %d ready on %s (%.1f s to load %s)", os.getpid(), path, state["load_s"], preloaded)
    last = time.monotonic()
    try:
        while not state["stop"]:
            _reap(state)
            if idle_timeout and not state["children"] and time.monotonic() - last > idle_timeout:
                log.info("idle for %.0f s: stopping", idle_timeout)
                break
            try:
                conn, _ = server.accept()
            except (TimeoutError, InterruptedError):
                continue
            last = time.monotonic()
            with conn:
                try:
                    _handle(server, conn, state, started)
                except (OSError, ValueError) as exc:  # one bad request or a failed fork: the client runs it
                    log.warning("request not served: %s", exc)
    finally:
        server.close()
        if path.exists() and path.stat().st_ino == inode:  # not a newer worker's socket
            path.unlink()


def _preload(bases: Sequence[str]) -> list[str]:
    """Import what a command imports and load each base model (no computation: see the module docstring)."""
    import importlib
    import pkgutil

    import torch  # noqa: F401  (imported here so the children find it loaded)

    for info in pkgutil.walk_packages(cathrepo.__path__, "cathrepo."):
        if not info.name.endswith("__main__"):  # importing that one would run the command line
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # an optional dependency missing: that module loads in the command
                log.info("not preloaded: %s (%s)", info.name, exc)
    from cathrepo.models import preload, resolve_model

    names = []
    for source in bases:
        resolved = resolve_model(source)
        preload(resolved.path)
        names.append(resolved.name)
    return names


def _private(path: Path) -> Path:
    """``path`` after making its directory, which must belong to this user alone."""
    from cathrepo.exceptions import CathrepoError

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.parent.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise CathrepoError(f"The worker's directory {path.parent} is writable by other users.",
                            hint="Set CATHREPO_WORKER_SOCKET to a path in a directory of your own.")
    return path


def _log_to_stderr(on: bool) -> None:
    """The worker's own log lines (start, stop, requests not served) go to its stderr, the log file;
    nothing else's level or handlers change, so a forked command logs as it would anywhere."""
    log.handlers.clear()
    log.propagate = not on
    log.setLevel(logging.INFO if on else logging.NOTSET)
    if on:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)


def _reap(state: dict[str, Any]) -> None:
    for pid in list(state["children"]):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            state["children"].discard(pid)


def _handle(server: socket.socket, conn: socket.socket, state: dict[str, Any], started: float) -> None:
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
    if uid != os.getuid():
        return  # only the user who started the worker may use it (the socket is 0600 as well)
    conn.settimeout(5.0)  # a client that connects and says nothing does not hold the worker up
    message, fds = receive(conn, with_fds=3)
    try:
        if message is None:
            return
        op = message.get("op")
        if op == "status":
            send(conn, {**{k: v for k, v in state.items() if k not in ("children", "stop")},
                        "commands_running": len(state["children"]), "uptime_s": round(time.monotonic() - started, 1)})
        elif op == "stop":
            state["stop"] = True
            send(conn, {"stopping": state["pid"]})
        elif op == "run" and len(fds) == 3:
            if message.get("fingerprint") != state["fingerprint"]:
                send(conn, {"stale": state["fingerprint"]})
                return
            pid = os.fork()
            if pid == 0:
                server.close()
                _child(conn, fds, message)  # never returns
            state["children"].add(pid)
            state["served"] += 1
    finally:
        for fd in fds:
            os.close(fd)


def _child(conn: socket.socket, fds: list[int], message: dict[str, Any]) -> None:
    """In the forked process: take over the client's terminal, directory and environment, run the
    command line, report the exit code and exit."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        conn.settimeout(None)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        encoding = message.get("encoding") or "utf-8"
        sys.stdin = open(0, encoding=encoding, closefd=False)  # noqa: SIM115 - the process's own streams
        sys.stdout = open(1, "w", encoding=encoding, closefd=False, buffering=1 if os.isatty(1) else -1)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
        os.chdir(message["cwd"])
        os.environ.clear()
        os.environ.update(message["env"])
        _threads(message["env"])
        _log_to_stderr(False)  # the command logs as the command line sets it up
        send(conn, {"pid": os.getpid()})
        code = _run(message["args"])
    except BaseException:  # noqa: BLE001 - the child must report and exit whatever happened
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed terminal: nothing left to tell
                pass
        try:
            send(conn, {"exit": code})
        finally:
            os._exit(code)


def _threads(env: dict[str, str]) -> None:
    """torch's thread count as the client's ``OMP_NUM_THREADS`` asks (torch read the worker's at import)."""
    value = env.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        import torch

        torch.set_num_threads(int(value))


def _run(args: Sequence[str]) -> int:
    from cathrepo.cli import main

    try:
        returned = main(list(args))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    return returned if isinstance(returned, int) else 0


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
    path = _private(socket_path())
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
