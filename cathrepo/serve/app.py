"""The HTTP side of ``cathrepo serve``: an aiohttp application speaking OpenAI's API.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST /v1/explain``
(``cathrepo explain``: which active edits caused the answer), ``GET /health``.
Every answer carries, besides OpenAI's fields, a ``cathrepo`` field: the ref, commit and tenant that
answered and each active edit's provenance. Errors have OpenAI's shape (``{"error": {"message", "type",
"param", "code"}}``): 400 bad parameters, 401 a missing or wrong bearer token, 404 an unknown model or
tenant, 413 a body over the limit, 504 past the deadline. Generation runs in the server's thread pool, never
on the event loop; each request is logged (``cathrepo.serve``) with its model, status and time.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cathrepo.exceptions import CathrepoError, InvalidInputError, NotFoundError, VerificationError
from cathrepo.serve.cache import ServeTimeoutError
from cathrepo.serve.inference import ParamError, Params, chat_messages, completion_prompt, request_params
from cathrepo.serve.server import Answer

if TYPE_CHECKING:
    from cathrepo.serve.server import Server

log = logging.getLogger("cathrepo.serve")

SERVER: web.AppKey[Server] = web.AppKey("server")
#: The ``model`` a request asked for, for its log line (set by the handler, read by the middleware).
ASKED: contextvars.ContextVar[str] = contextvars.ContextVar("cathrepo_serve_model", default="-")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Seconds the HTTP side waits beyond a request's deadline for its worker thread to report the timeout.
GRACE_S = 5.0


def error_response(status: int, message: str, kind: str, *, param: str | None = None,
                   code: str | None = None) -> web.Response:
    """An error in OpenAI's shape."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _for_exception(exc: BaseException) -> web.Response:
    """The error response for what a handler raised."""
    if isinstance(exc, web.HTTPException):  # aiohttp's own: 404 route, 405 method, 413 body
        kind = "request_too_large" if exc.status == 413 else "invalid_request_error"
        return error_response(exc.status, exc.text or exc.reason, kind)
    if isinstance(exc, ServeTimeoutError):
        return error_response(504, exc.message, "timeout", code="timeout")
    if isinstance(exc, ParamError):
        return error_response(400, exc.message, "invalid_request_error", param=exc.param)
    if isinstance(exc, NotFoundError):
        message = exc.message + (f" {exc.hint}" if exc.hint else "")
        return error_response(404, message, "invalid_request_error", param="model", code="model_not_found")
    if isinstance(exc, InvalidInputError):
        return error_response(400, exc.message, "invalid_request_error")
    if isinstance(exc, VerificationError):
        return error_response(500, f"The requested model does not verify: {exc.message}", "verification_error")
    if isinstance(exc, CathrepoError):
        return error_response(500, exc.message, "server_error")
    log.exception("internal error", exc_info=exc)
    return error_response(500, "Internal server error (see the server's log).", "server_error")


@web.middleware
async def logged(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log each request: peer, method, path, model, status and milliseconds; errors as OpenAI errors."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except Exception as exc:  # every failure becomes an answer in OpenAI's shape, here and only here
        response = _for_exception(exc)
    log.info("%s %s %s model=%s %d %.0f ms", request.remote, request.method, request.path,
             ASKED.get(), response.status, 1000 * (time.perf_counter() - started))
    return response


@web.middleware
async def bounded_and_authorized(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The bearer token (when the server has one) and the body size, checked before anything is read."""
    server = request.app[SERVER]
    token = server.settings.token
    if token and request.path != "/health":
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            response = error_response(401, "Missing or wrong bearer token (Authorization: Bearer TOKEN).",
                                      "invalid_request_error", code="invalid_api_key")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
    limit = server.settings.config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, f"The request body is {request.content_length} bytes; this server accepts "
                                   f"at most {limit}.", "request_too_large")
    return await handler(request)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # aiohttp refuses past client_max_size with 413 (chunked bodies too)
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInputError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidInputError("The request body must be a JSON object.")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ParamError("'model' must be a string.", param="model")
    ASKED.set(model or "(default)")
    return body


async def _answer(request: web.Request, model: str | None, prompt: str | list[dict[str, str]],
                  params: Params) -> Answer:
    """Select and tokenize in the server's ``io`` thread, then wait for the batcher's output, all within
    the request's timeout."""
    server = request.app[SERVER]
    timeout = server.settings.config.timeout_s
    deadline = time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    try:
        selection, ids = await asyncio.wait_for(loop.run_in_executor(server.io, server.prepare, model, prompt,
                                                                     params.max_tokens),
                                                timeout)
        future = server.submit(selection, ids, params, deadline)
        output = await asyncio.wait_for(asyncio.wrap_future(future), deadline - time.monotonic() + GRACE_S)
    except TimeoutError:
        raise ServeTimeoutError(f"The request ran past the server's limit of {timeout:g} s.") from None
    return Answer(selection, output)


def _envelope(kind: str, model: str, answer: Answer, choice: dict[str, Any]) -> dict[str, Any]:
    prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model,
            "choices": [{"index": 0, **choice, "finish_reason": answer.output.finish_reason}],
            "usage": answer.output.usage(), "cathrepo": answer.selection.provenance()}


async def completions(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    body = await _body(request)
    params = request_params(body, server.settings.limits)
    prompt = completion_prompt(body)
    answer = await _answer(request, body.get("model"), prompt, params)
    choice = {"text": answer.output.text, "logprobs": None}
    return web.json_response(_envelope("text_completion", answer.selection.model, answer, choice))


async def chat_completions(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    body = await _body(request)
    params = request_params(body, server.settings.limits)
    messages = chat_messages(body)
    answer = await _answer(request, body.get("model"), messages, params)
    choice = {"message": {"role": "assistant", "content": answer.output.text}, "logprobs": None}
    return web.json_response(_envelope("chat.completion", answer.selection.model, answer, choice))


async def explain(request: web.Request) -> web.Response:
    """``cathrepo explain`` over HTTP: ``model`` and ``prompt`` as for completions, ``max_tokens`` the
    length of the answer explained; the explanation (answer, base answer, each edit's effect, the cause)
    in ``explanation``."""
    server = request.app[SERVER]
    body = await _body(request)
    params = request_params(body, server.settings.limits)
    prompt = completion_prompt(body)
    timeout = server.settings.config.timeout_s
    deadline = time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    try:
        selection, _ = await asyncio.wait_for(loop.run_in_executor(server.io, server.prepare, body.get("model"),
                                                                   prompt, params.max_tokens), timeout)
        future = loop.run_in_executor(server.pool, server.explain, selection, prompt, params.max_tokens, deadline)
        explanation = await asyncio.wait_for(future, deadline - time.monotonic())
    except TimeoutError:
        raise ServeTimeoutError(f"The explanation ran past the server's limit of {timeout:g} s.") from None
    return web.json_response({"id": f"expl-{uuid.uuid4().hex}", "object": "explanation", "created": int(time.time()),
                              "model": selection.model, "explanation": explanation,
                              "cathrepo": selection.provenance()})


async def models(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    listed = await asyncio.get_running_loop().run_in_executor(server.io, server.models)
    created = int(server.started)
    data = [{"id": m["id"], "object": "model", "created": created, "owned_by": "cathrepo",
             "cathrepo": {k: v for k, v in m.items() if k != "id"}} for m in listed]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    return web.json_response({"status": "ok", "default_model": server.settings.config.ref,
                              "cached_models": len(server.cache.keys()),
                              "queued": server.batcher.queued()})


def build_app(server: Server) -> web.Application:
    """The application for ``server``, its body limit set to the settings' ``max_body_bytes``."""
    app = web.Application(middlewares=[logged, bounded_and_authorized],
                          client_max_size=server.settings.config.max_body_bytes)
    app[SERVER] = server
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/explain", explain)
    return app
