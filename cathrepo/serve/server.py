"""The server's state and life: its settings, the base model and model cache, the work each request does
in a worker thread, and starting and stopping the HTTP listener (:mod:`cathrepo.serve.app` is the HTTP
side).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.config import ServeConfig
from cathrepo.exceptions import InvalidInputError
from cathrepo.serve.cache import ModelCache, ServeTimeoutError
from cathrepo.serve.inference import Limits, Output, Params, chat_prompt, complete, prompt_ids
from cathrepo.serve.select import Selection, Selector

if TYPE_CHECKING:
    from cathrepo.repo import Repo

log = logging.getLogger("cathrepo.serve")

TOKEN_ENV = "CATHREPO_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``cathrepo serve`` is started with: the ``[serve]`` table, command-line options on top,
    and the bearer token (from ``--token`` or ``CATHREPO_SERVE_TOKEN``, never from the repository)."""

    config: ServeConfig
    token: str | None = None

    @classmethod
    def of(cls, config: ServeConfig, token: str | None = None, **overrides: Any) -> ServeSettings:
        """``config`` with the options that were given (None: not given) and the token; refuses a
        non-loopback host without a token."""
        given = {k: v for k, v in overrides.items() if v is not None}
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        settings = cls(dataclasses.replace(config, **given), token)
        if not is_loopback(settings.config.host) and not settings.token:
            raise InvalidInputError(f"Refusing to listen on {settings.config.host} without a bearer token: anyone "
                                    "who can reach it could query every tenant's model.",
                                    hint=f"Pass --token or set {TOKEN_ENV}, or listen on 127.0.0.1.")
        return settings

    @property
    def limits(self) -> Limits:
        return Limits(self.config.max_prompt_tokens, self.config.max_tokens)


@dataclass(frozen=True)
class Answer:
    """What a request's worker thread hands back to the HTTP side."""

    selection: Selection
    output: Output


class Server:
    """One repository served: the verified base model (loaded once), the selector and the model cache."""

    def __init__(self, repo: Repo, settings: ServeSettings) -> None:
        self.repo = repo
        self.settings = settings
        self.selector = Selector(repo, settings.config.ref)
        self.selector.resolve(settings.config.ref)  # an unknown default ref refuses to start
        self.base, self.tokenizer = repo.load_base()
        self.cache = ModelCache(self.base, settings.config.cache_models)
        self.pool = ThreadPoolExecutor(settings.config.workers, thread_name_prefix="cathrepo-serve")
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer refuses use from two threads at once
        self.started = time.time()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- the work of one request, in a worker thread ------------------------------------------------

    def generate(self, model: str | None, prompt: str | list[dict[str, str]], params: Params,
                 deadline: float) -> Answer:
        """Select ``model``'s edits, then generate from ``prompt`` (a string, or chat messages) on the model
        materialized with them.

        Raises:
            NotFoundError: unknown model or tenant. ParamError: the prompt is too long.
            ServeTimeoutError: ``deadline`` passed.
        """
        selection = self.selector.select(model)
        with self._tokenizer_lock:
            text = prompt if isinstance(prompt, str) else chat_prompt(self.tokenizer, prompt)
            ids = prompt_ids(self.tokenizer, text, self.settings.limits)
        with self.cache.holding(selection.key, selection.deltas, deadline) as materialized:
            output = complete(materialized, self.tokenizer, ids, params, deadline=deadline)
        if output is None:
            raise ServeTimeoutError(f"Generation ran past the server's limit of {self.settings.config.timeout_s:g} s.",
                                    hint="Ask for fewer tokens, or raise --timeout.")
        return Answer(selection, output)

    def models(self) -> list[dict[str, Any]]:
        return self.selector.models()


# --- listening ------------------------------------------------------------------------------------


async def _start(server: Server, host: str, port: int) -> tuple[Any, str]:
    from aiohttp import web

    from cathrepo.serve.app import build_app

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

