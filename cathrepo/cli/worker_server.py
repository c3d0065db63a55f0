"""The resident worker's server side: preload, listen, fork one process per command (see
:mod:`cathrepo.cli.worker` for the protocol, the client and why the worker never computes before it forks)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

import cathrepo
from cathrepo import __version__
from cathrepo.cli.worker import fingerprint, private, receive, send, socket_path

log = logging.getLogger("cathrepo.cli.worker")  # the worker's one logger, whichever module logs


def serve(bases: Sequence[str], idle_timeout: float) -> None:
    """Preload, listen on :func:`socket_path` and fork one child per command until stopped or idle."""
    from cathrepo.cli import quiet_libraries

    quiet_libraries()  # before transformers is imported: its progress bars read the environment then
    _log_to_stderr(True)
    started = time.monotonic()
    preloaded = _preload(bases)
    path = private(socket_path())
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


#: Libraries cathrepo imports inside the functions that need them (so that a short command does not pay
#: for them): the worker imports them once, so a command that commits does not spend a second on DVC.
LAZY_IMPORTS = ("dvc.repo", "dvc.logger", "dvc.ui", "dvc.exceptions", "git", "safetensors.torch", "peft",
                "cryptography.hazmat.primitives.serialization",
                "cryptography.hazmat.primitives.asymmetric.ed25519", "rich.console", "rich.table")


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
    for name in LAZY_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # not installed: the command that needs it says so itself
            log.info("not preloaded: %s (%s)", name, exc)
    from cathrepo.models import preload, resolve_model

    names = []
    for source in bases:
        resolved = resolve_model(source)
        preload(resolved.path)
        names.append(resolved.name)
    return names


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
