"""Listening: ``cathrepo serve`` in the foreground until a signal, or in a background thread for tests and
benchmarks, on the settings' address (port 0: any free port)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cathrepo.serve.app import build_app
from cathrepo.serve.server import Server

log = logging.getLogger("cathrepo.serve")


async def _start(server: Server, host: str, port: int) -> tuple[Any, str]:
    from aiohttp import web

    runner = web.AppRunner(build_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
    return runner, f"http://{shown}:{bound[1]}"


def serve_forever(server: Server, on_ready: Callable[[str], None] | None = None) -> None:
    """Listen on the settings' host and port until SIGINT or SIGTERM; ``on_ready`` gets the base URL."""

    async def main() -> None:
        runner, url = await _start(server, server.settings.config.host, server.settings.config.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("serving %s on %s (default model %s)", server.repo.root, url, server.settings.config.ref)
        if on_ready is not None:
            on_ready(url)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        server.close()


@contextmanager
def running(server: Server, host: str | None = None, port: int = 0) -> Iterator[str]:
    """The server listening in a background thread (tests, benchmarks); yields its base URL and stops it
    on exit."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            ready["runner"], ready["url"] = loop.run_until_complete(_start(server, host or "127.0.0.1", port))
        except BaseException as exc:  # handed to the caller's thread below
            ready["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="cathrepo-serve-loop", daemon=True)
    thread.start()
    started.wait()
    if "error" in ready:
        loop.close()
        raise ready["error"]
    try:
        yield ready["url"]
    finally:
        asyncio.run_coroutine_threadsafe(ready["runner"].cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()

