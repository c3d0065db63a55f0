"""The server's state and life: its settings, the base model and model cache, the work each request does
in a worker thread, and starting and stopping the HTTP listener (:mod:`cathrepo.serve.app` is the HTTP
side).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.config import ServeConfig
from cathrepo.exceptions import InvalidInputError
from cathrepo.serve.batching import Batcher
from cathrepo.serve.cache import ModelCache, ServeTimeoutError
from cathrepo.serve.inference import Limits, Output, ParamError, Params, chat_prompt, prompt_ids
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
    """What a request gets back: the selection that answered and the generation."""

    selection: Selection
    output: Output


class Server:
    """One repository served: the verified base model (loaded once), the selector, the model cache and
    the batcher. ``io`` (one thread) reads the repository and tokenizes; ``pool`` decodes."""

    def __init__(self, repo: Repo, settings: ServeSettings) -> None:
        self.repo = repo
        self.settings = settings
        self.selector = Selector(repo, settings.config.ref)
        self.selector.resolve(settings.config.ref)  # an unknown default ref refuses to start
        self.base, self.tokenizer = repo.load_base()
        self.cache = ModelCache(self.base, settings.config.cache_models)
        self.io = ThreadPoolExecutor(1, thread_name_prefix="cathrepo-serve-io")
        self.pool = ThreadPoolExecutor(settings.config.workers, thread_name_prefix="cathrepo-serve")
        self.batcher = Batcher(self.cache, self.tokenizer, self.pool, settings.config.max_batch)
        self._explaining = threading.Lock()
        self.started = time.time()

    def close(self) -> None:
        self.io.shutdown(wait=False, cancel_futures=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def prepare(self, model: str | None, prompt: str | list[dict[str, str]],
                max_tokens: int = 0) -> tuple[Selection, list[int]]:
        """(in ``io``) The edits ``model`` selects and the prompt's token ids (chat messages through the
        chat template).

        Raises:
            NotFoundError: unknown model or tenant. ParamError: the prompt is too long, alone or with
                ``max_tokens`` for the model's context.
        """
        selection = self.selector.select(model)
        text = prompt if isinstance(prompt, str) else chat_prompt(self.tokenizer, prompt)
        ids = prompt_ids(self.tokenizer, text, self.settings.limits)
        context = getattr(getattr(self.base, "config", None), "max_position_embeddings", None)
        if isinstance(context, int) and len(ids) + max_tokens > context:
            raise ParamError(f"The prompt ({len(ids)} tokens) and max_tokens ({max_tokens}) exceed the model's "
                             f"context of {context} tokens.", param="max_tokens")
        return selection, ids

    def submit(self, selection: Selection, ids: list[int], params: Params, deadline: float) -> Future[Output]:
        """Queue the generation on ``selection``'s model; the output (or ServeTimeoutError) comes in the
        future."""
        return self.batcher.submit(selection.key, selection.deltas, ids, params, deadline)

    def generate(self, model: str | None, prompt: str | list[dict[str, str]], params: Params,
                 timeout: float | None = None) -> Answer:
        """:meth:`prepare` and :meth:`submit` from a plain thread, waiting for the answer (no HTTP)."""
        deadline = time.monotonic() + (timeout or self.settings.config.timeout_s)
        selection, ids = self.io.submit(self.prepare, model, prompt).result()
        return Answer(selection, self.submit(selection, ids, params, deadline).result())

    def explain(self, selection: Selection, prompt: str, max_tokens: int, deadline: float) -> dict[str, Any]:
        """(in ``pool``) ``cathrepo explain`` of ``prompt`` on ``selection``: the answer and each active edit's
        causal effect on it. It materializes a model of its own (it subtracts each delta in turn), so the
        cached models are never touched; one explanation runs at a time, bounding the memory it takes.

        Raises:
            ServeTimeoutError: another explanation held the slot past ``deadline``.
        """
        from cathrepo.repo.explain import explain

        if not self._explaining.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise ServeTimeoutError("The request timed out waiting for another explanation to finish.",
                                    hint="Retry later, or raise the server's --timeout.")
        try:
            return explain(self.repo, prompt, selection.commit, tenant=selection.tenant,
                           max_new_tokens=max_tokens).to_dict()
        finally:
            self._explaining.release()

    def models(self) -> list[dict[str, Any]]:
        return self.selector.models()
