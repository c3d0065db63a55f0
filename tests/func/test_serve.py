"""``cathrepo serve`` over real HTTP on loopback, on a real repository (tiny Llama): completions and chat
with the provenance of the active edits, refs as models, refusals (unknown model, oversized body, bad
parameters, missing token, deadline), and concurrent requests each getting its own model's edits."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cathrepo.config import ServeConfig, TenantConfig
from cathrepo.exceptions import InvalidInputError, NotFoundError
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo
from cathrepo.serve.inference import PLAIN_CHAT
from cathrepo.serve.listen import running
from cathrepo.serve.server import Server, ServeSettings
from tests.func.test_repo_flow import FACT, OTHER, _tune

pytestmark = pytest.mark.usefixtures("one_thread")


def call(url: str, path: str, body: Any = None, *, token: str | None = None, raw: bytes | None = None,
         chunks: list[bytes] | None = None, method: str | None = None) -> tuple[int, dict[str, Any]]:
    """One HTTP request with the standard library: (status, JSON body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        if chunks is not None:
            conn.request(method or "POST", path, body=iter(chunks), headers=headers, encode_chunked=True)
        else:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            conn.request(method or ("GET" if data is None else "POST"), path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


@contextmanager
def serving(repo: Repo, token: str | None = None, **options: Any) -> Iterator[tuple[str, Server]]:
    """A server on ``repo`` listening on a free loopback port: (its URL, the server)."""
    server = Server(repo, ServeSettings.of(repo.config.serve, token, **options))
    try:
        with running(server) as url:
            yield url, server
    finally:
        server.close()


def ask_at_once(url: str, server: Server, jobs: list[tuple[str, str]], *, queue_first: bool,
                max_tokens: int = 6) -> list[tuple[int, dict[str, Any]]]:
    """Each (model, prompt) of ``jobs`` as a completion request from its own thread, all at once. With
    ``queue_first`` the decoding threads are held until every request is queued, so each model's requests
    are decoded in one batch; otherwise they interleave as they come."""
    results: dict[int, tuple[int, dict[str, Any]]] = {}

    def ask(i: int, model: str, prompt: str) -> None:
        results[i] = call(url, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens})

    release = threading.Event()
    if not queue_first:
        release.set()
    busy = [server.pool.submit(release.wait, 60) for _ in range(server.settings.config.workers)]
    threads = [threading.Thread(target=ask, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    if queue_first:
        deadline = time.monotonic() + 60
        while server.batcher.queued() < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert call(url, "/health")[1]["queued"] == len(jobs)
        release.set()
    for thread in threads:
        thread.join()
    assert all(b.result() for b in busy)
    return [results[i] for i in range(len(jobs))]


@pytest.fixture
def bare(tmp_path, tiny_llama, corpus) -> Repo:
    """A repository with no edit yet."""
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    return repo


@pytest.fixture
def edited(bare) -> tuple[Repo, dict[str, str]]:
    """Three revisions: no edit (``base``), one edit promoted to production, two edits on main."""
    revs = {"base": bare.git.head()}
    bare.edit([EditRequest(FACT, source="test://fact", author="tester", risk="low")])
    revs["production"] = bare.git.head()
    bare.promote(revs["production"], "production", "the first edit", gate=False)
    bare.edit([EditRequest(OTHER, source="test://other", author="tester", risk="medium")])
    revs["main"] = bare.git.head()
    return bare, revs


def test_completions_and_chat_answer_with_the_active_edits_provenance(edited):
    repo, revs = edited
    production_edit, main_edit = repo.stack("main").active
    with serving(repo) as (url, server):
        status, out = call(url, "/v1/completions", {"prompt": FACT.prompt, "max_tokens": 6})
        assert status == 200, out
        assert out["object"] == "text_completion" and out["id"].startswith("cmpl-") and out["model"] == "production"
        (choice,) = out["choices"]
        expected = repo.generate(FACT.prompt, revs["production"], max_new_tokens=6)
        assert choice["text"].strip() == expected.text and choice["finish_reason"] in ("stop", "length")
        assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
        meta = out["cathrepo"]
        assert (meta["ref"], meta["commit"], meta["tenant"]) == ("production", revs["production"], None)
        (edit,) = meta["edits"]
        assert edit["id"] == production_edit and edit["summary"] == f"{FACT.prompt} -> {FACT.target_new}"
        assert (edit["source"], edit["author"], edit["risk"]) == ("test://fact", "tester", "low") and edit["created"]
        assert edit["signature"] == {"status": "verified", "signer": "test@example.com"}

        messages = [{"role": "user", "content": OTHER.prompt}]
        status, chat = call(url, "/v1/chat/completions", {"model": "main", "messages": messages, "max_tokens": 5})
        assert status == 200, chat
        assert chat["object"] == "chat.completion" and chat["model"] == "main"
        message = chat["choices"][0]["message"]
        prompt = PLAIN_CHAT.format(**messages[0]) + "assistant:"  # the tiny tokenizer has no chat template
        assert message["role"] == "assistant"
        assert message["content"].strip() == repo.generate(prompt, "main", max_new_tokens=5).text
        assert [e["id"] for e in chat["cathrepo"]["edits"]] == [production_edit, main_edit]

        status, listed = call(url, "/v1/models")
        assert status == 200 and listed["object"] == "list"
        by_id = {m["id"]: m["cathrepo"]["commit"] for m in listed["data"]}
        assert by_id["production"] == revs["production"] and by_id["main"] == revs["main"]


def test_concurrent_requests_each_get_their_own_models_edits(edited):
    """Twelve requests on three models at once, from threads: requests to one model are decoded
    together, and each answer is what ``generate`` gives at its revision, naming that revision's edits."""
    repo, revs = edited
    prompts = [FACT.prompt, OTHER.prompt]
    expected = {(name, p): repo.generate(p, rev, max_new_tokens=6).text for name, rev in revs.items() for p in prompts}
    edits = {name: list(repo.stack(rev).active) for name, rev in revs.items()}
    assert len({tuple(v) for v in edits.values()}) == 3
    jobs = [(name, p) for name in ("production", "main", revs["base"]) for p in prompts] * 2
    with serving(repo, workers=2, cache_models=2) as (url, server):
        results = ask_at_once(url, server, jobs, queue_first=True)
        assert server.batcher.batch_sizes == {4: 3}  # each model's four requests decoded together
    for (model, prompt), (status, out) in zip(jobs, results, strict=True):
        name = "base" if model == revs["base"] else model
        assert status == 200, out
        assert out["choices"][0]["text"].strip() == expected[(name, prompt)]
        assert [e["id"] for e in out["cathrepo"]["edits"]] == edits[name] and out["cathrepo"]["commit"] == revs[name]


def test_refusals_have_openai_error_shape_and_status(bare):
    with pytest.raises(NotFoundError, match="production"):  # nothing promoted yet: the default ref is unknown
        Server(bare, ServeSettings.of(bare.config.serve))
    with serving(bare, ref="main", max_body_bytes=2000, max_prompt_tokens=40, max_tokens=8) as (url, server):
        status, out = call(url, "/v1/completions", {"model": "nosuch", "prompt": "Hello"})
        assert status == 404 and out["error"]["code"] == "model_not_found" and "nosuch" in out["error"]["message"]
        assert set(out["error"]) == {"message", "type", "param", "code"}
        status, out = call(url, "/v1/completions", {"prompt": "x" * 3000})
        assert status == 413 and out["error"]["type"] == "request_too_large"
        status, out = call(url, "/v1/completions", chunks=[b'{"prompt": "', b"x" * 3000, b'"}'])
        assert status == 413 and out["error"]["type"] == "request_too_large"
        status, out = call(url, "/v1/completions", {"prompt": "Hello", "max_tokens": 9})
        assert status == 400 and out["error"]["param"] == "max_tokens"
        status, out = call(url, "/v1/completions", {"prompt": "Paris " * 60})
        assert status == 400 and out["error"]["param"] == "prompt" and "at most 40" in out["error"]["message"]
        status, out = call(url, "/v1/completions", {"prompt": "Hello", "stream": True})
        assert status == 400 and out["error"]["param"] == "stream"
        status, out = call(url, "/v1/completions", raw=b"{not json")
        assert status == 400 and "JSON" in out["error"]["message"]
        status, out = call(url, "/v1/nothing", {"prompt": "Hello"})
        assert status == 404 and "error" in out
        status, out = call(url, "/v1/completions", {"prompt": "Hello", "max_tokens": 3})
        assert status == 200 and out["cathrepo"]["edits"] == [] and out["cathrepo"]["ref"] == "main"
    with serving(bare, ref="main", max_tokens=200) as (url, server):  # the tiny model's context: 128
        status, out = call(url, "/v1/completions", {"prompt": "Paris " * 30, "max_tokens": 100})
        assert status == 400 and out["error"]["param"] == "max_tokens" and "context of 128" in out["error"]["message"]


def test_a_request_past_its_deadline_gets_504(bare):
    with serving(bare, ref="main", timeout_s=1e-6) as (url, server):
        status, out = call(url, "/v1/completions", {"prompt": "Hello", "max_tokens": 4})
    assert status == 504 and out["error"]["type"] == "timeout"


def test_a_bearer_token_is_required_off_loopback_and_checked_when_set(bare, monkeypatch):
    monkeypatch.delenv("CATHREPO_SERVE_TOKEN", raising=False)
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(InvalidInputError, match="without a bearer token"):
            ServeSettings.of(ServeConfig(), host=host)
    assert ServeSettings.of(ServeConfig(), "s3cret", host="0.0.0.0").token == "s3cret"
    monkeypatch.setenv("CATHREPO_SERVE_TOKEN", "from-env")
    assert ServeSettings.of(ServeConfig(), host="0.0.0.0").token == "from-env"
    with serving(bare, "s3cret", ref="main") as (url, server):
        body = {"prompt": "Hello", "max_tokens": 2}
        for token in (None, "wrong", "s3cre"):
            status, out = call(url, "/v1/completions", body, token=token)
            assert status == 401 and out["error"]["code"] == "invalid_api_key"
        assert call(url, "/v1/models")[0] == 401
        assert call(url, "/v1/completions", body, token="s3cret")[0] == 200
        assert call(url, "/health")[0] == 200


def test_two_tenants_at_once_each_get_only_their_edits(edited):
    """Tenants as models (``TENANT`` at the default ref, ``TENANT@REF``): requests from two tenants and the
    whole active set at once, from threads, interleaved as they come and then queued into one batch per
    model, each answered as ``generate --tenant`` answers; an unknown tenant, or one the ref does not
    define, is a 404."""
    from tests.func.test_tenants import set_tenants

    repo, _ = edited
    fact_edit, other_edit = repo.stack("main").active
    set_tenants(repo, {"acme": TenantConfig(include=[f"edit:{fact_edit[:8]}"]),
                       "globex": TenantConfig(include=[f"edit:{other_edit[:8]}"])})
    prompts = [FACT.prompt, OTHER.prompt]
    tenant_of = {"acme": "acme", "globex@main": "globex", "main": None}
    expected = {(model, p): repo.generate(p, "main", max_new_tokens=6, tenant=tenant).text
                for model, tenant in tenant_of.items() for p in prompts}
    assert expected[("acme", FACT.prompt)] != expected[("globex@main", FACT.prompt)]  # the edits differ
    jobs = [(model, p) for model in tenant_of for p in prompts] * 2
    with serving(repo, ref="main", workers=2) as (url, server):
        results = ask_at_once(url, server, jobs, queue_first=False) + ask_at_once(url, server, jobs, queue_first=True)
        sizes = server.batcher.batch_sizes  # the second round: one batch of four per model
        assert sizes[4] >= 3 and sum(size * n for size, n in sizes.items()) == 2 * len(jobs)
        for model in ("nosuch@main", "acme@production"):
            status, out = call(url, "/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": 2})
            assert status == 404 and "Known tenants" in out["error"]["message"], out
        listed = {m["id"]: m["cathrepo"] for m in call(url, "/v1/models")[1]["data"]}
        assert listed["acme"]["tenant"] == "acme" and listed["globex"]["ref"] == "main"
    edits = {"acme": [fact_edit], "globex@main": [other_edit], "main": [fact_edit, other_edit]}
    for (model, prompt), (status, out) in zip(jobs * 2, results, strict=True):
        assert status == 200, out
        assert out["choices"][0]["text"].strip() == expected[(model, prompt)]
        assert out["cathrepo"]["tenant"] == tenant_of[model] and out["model"] == model
        assert [e["id"] for e in out["cathrepo"]["edits"]] == edits[model]


def test_explain_over_http_is_cathrepo_explain(edited):
    """``POST /v1/explain`` answers what ``Repo.explain`` answers at the same ref and tenant, with the
    selection's provenance beside it; an unknown model is a 404 there too."""
    from tests.func.test_tenants import set_tenants

    repo, _ = edited
    fact_edit, other_edit = repo.stack("main").active
    set_tenants(repo, {"acme": TenantConfig(include=[f"edit:{fact_edit[:8]}"])})
    with serving(repo, ref="main") as (url, _server):
        for model, tenant, ids in (("main", None, [fact_edit, other_edit]), ("acme", "acme", [fact_edit])):
            status, out = call(url, "/v1/explain", {"model": model, "prompt": FACT.prompt, "max_tokens": 1})
            assert status == 200, out
            assert out["object"] == "explanation" and out["model"] == model and out["id"].startswith("expl-")
            expected = repo.explain(FACT.prompt, "main", tenant=tenant, max_new_tokens=1).to_dict()
            got = out["explanation"]
            assert (got["answer"], got["base_answer"], got["cause"]) == \
                (expected["answer"], expected["base_answer"], expected["cause"])
            assert [e["id"] for e in got["edits"]] == ids == [e["id"] for e in out["cathrepo"]["edits"]]
            assert got["tenant"] == tenant == out["cathrepo"]["tenant"]
            assert out["cathrepo"]["edits"][0]["signature"] == got["edits"][0]["provenance"]["signature"]
        status, out = call(url, "/v1/explain", {"model": "nosuch@main", "prompt": FACT.prompt})
        assert status == 404 and out["error"]["code"] == "model_not_found"
