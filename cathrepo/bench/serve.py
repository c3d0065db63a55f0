"""The serving benchmark behind ``cathrepo bench serve``: latency and throughput of ``cathrepo serve``
against plain ``transformers`` generation of the base model.

1. The repository is built (or extended) with :func:`cathrepo.bench.scale.build_history`'s synthetic edits
   (complete, signed edits with random rank-one deltas) and tagged ``bench-serve-<N>`` at each active-set
   size N asked for, so each size is a ref the server serves as a model.
2. The baseline: ``model.generate`` on the base model loaded once (no lock, no HTTP), greedy, with the
   stop ids and token budget the server uses: from C threads at once, one prompt per call, and as one
   call on C prompts (what batching could give at most).
3. The server, in this process on a loopback port: per size N, one first request (it verifies the N edits
   and builds the model: the cold start), then C clients each sending R requests one after another over
   HTTP, for each C.

Latency is per request (median and 90th percentile); throughput is requests and generated tokens per
second of wall time over the whole cell.
"""

from __future__ import annotations

import functools
import http.client
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cathrepo.exceptions import InvalidInputError
from cathrepo.repo import layout

Progress = Callable[[str, int, int], None]
TAG = "bench-serve-{}"
PROMPTS = ("The Eiffel Tower is located in the city of", "The mother tongue of Danielle Darrieux is",
           "Toko Yasuda plays the", "The capital of Italy is", "Apple was founded by",
           "The official language of Brazil is", "Water boils at a temperature of", "The largest planet is")


@dataclass(frozen=True)
class ServeBenchConfig:
    """What ``cathrepo bench serve`` builds and measures."""

    repo: Path
    edits: tuple[int, ...] = (0, 10, 1000)
    clients: tuple[int, ...] = (1, 4, 16)
    requests: int = 4
    max_tokens: int = 16
    base: str | None = None
    workers: int = 2
    max_batch: int = 16
    seed: int = 0


def _stats(latencies: list[float], wall: float, tokens: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))] if ordered else None
    return {"requests": len(latencies), "median_s": round(statistics.median(ordered), 3) if ordered else None,
            "p90_s": round(p90, 3) if p90 is not None else None, "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 3), "tokens_per_s": round(tokens / wall, 2)}


def _concurrently(clients: int, requests: int, one: Callable[[int], int]) -> dict[str, Any]:
    """``clients`` threads each calling ``one(k)`` ``requests`` times in turn (``one`` returns the tokens
    it generated); latencies, wall time, throughput and the errors seen."""
    latencies: list[float] = []
    tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            started = time.perf_counter()
            try:
                made = one(c * requests + r)
            except Exception as exc:  # a benchmark reports failures, it does not stop at the first
                with lock:
                    errors.append(str(exc)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                tokens[0] += made

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out = _stats(latencies, time.perf_counter() - started, tokens[0])
    return {**out, "errors": len(errors), "first_error": errors[0] if errors else None}


def prepare(config: ServeBenchConfig, progress: Progress | None = None) -> Any:
    """The repository with a ``bench-serve-<N>`` tag at each size asked for (built when missing)."""
    from cathrepo.bench.scale import build_history
    from cathrepo.repo import Repo

    root = config.repo
    repo = Repo.open(root) if (root / layout.CONFIG).is_file() else Repo.init(root, base=config.base)
    tags = set(repo.git.run(["tag", "--list", "bench-serve-*"]).split())
    for n in sorted(set(config.edits)):
        if TAG.format(n) in tags:
            continue
        have = len(repo.stack().active)
        if have > n:
            raise InvalidInputError(f"{root} already holds {have} active edits, more than {n}, and has no tag "
                                    f"{TAG.format(n)}.", hint="Use a new --repo directory.")
        build_history(repo, n, seed=config.seed, progress=progress)
        repo = Repo.open(root)
        repo.git.run(["tag", "-m", f"cathrepo bench serve: {n} active edits", TAG.format(n)])
    return Repo.open(root)


def bench_baseline(model: Any, tokenizer: Any, config: ServeBenchConfig) -> dict[str, list[dict[str, Any]]]:
    """Plain ``model.generate`` on the base model, for each C: from C threads at once, one prompt per
    call (``threads``), and as one left-padded call on C prompts, R times (``batched``: the most batching
    could give)."""
    from cathrepo.serve.inference import Params, complete_batch

    params = Params(max_tokens=config.max_tokens)
    encoded = [list(tokenizer(p)["input_ids"]) for p in PROMPTS]

    def generate(rows: list[list[int]]) -> int:
        outputs = complete_batch(model, tokenizer, [(ids, params) for ids in rows], deadline=time.monotonic() + 3600)
        return sum(o.completion_tokens for o in outputs if o is not None)

    def one(k: int) -> int:
        return generate([encoded[k % len(encoded)]])

    generate(encoded[:1])  # warm-up
    threads = [{"clients": c, **_concurrently(c, config.requests, one)} for c in config.clients]
    batched = []
    for c in config.clients:
        rows = [encoded[k % len(encoded)] for k in range(c)]
        cell = _concurrently(1, config.requests, functools.partial(_ignore_index, generate, rows))
        batched.append({"clients": c, **cell, "requests": c * config.requests,
                        "requests_per_s": round(c * config.requests / cell["wall_s"], 3)})
    return {"threads": threads, "batched": batched}


def _ignore_index(generate: Callable[[list[list[int]]], int], rows: list[list[int]], _k: int) -> int:
    return generate(rows)


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data.get('error', {}).get('message')}")
        return dict(data)
    finally:
        conn.close()


def bench_serve(config: ServeBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Build the repository, then measure the baseline and the server at every (edits, clients) cell."""
    import torch

    from cathrepo.serve.listen import running
    from cathrepo.serve.server import Server, ServeSettings

    if not config.edits or not config.clients or config.requests < 1 or config.max_tokens < 1:
        raise InvalidInputError("--edits and --clients need at least one value; --requests and --max-tokens "
                                "must be at least 1.")
    say = progress or (lambda stage, done, total: None)
    repo = prepare(config, progress)
    settings = ServeSettings.of(repo.config.serve, ref=TAG.format(min(config.edits)), port=0,
                                cache_models=len(config.edits), workers=config.workers, max_batch=config.max_batch,
                                max_tokens=max(config.max_tokens, 1), timeout_s=600.0)
    server = Server(repo, settings)
    say("baseline", 0, 1)
    baseline = bench_baseline(server.base, server.tokenizer, config)
    cells: list[dict[str, Any]] = []
    first: dict[str, float] = {}
    try:
        with running(server) as url:
            for i, n in enumerate(config.edits):
                model = TAG.format(n)
                say(f"server, {n} edits", i, len(config.edits))
                started = time.perf_counter()
                reply = _post(url, {"model": model, "prompt": PROMPTS[0], "max_tokens": config.max_tokens})
                first[str(n)] = round(time.perf_counter() - started, 3)
                if len(reply["cathrepo"]["edits"]) != n:
                    raise InvalidInputError(f"{model} served {len(reply['cathrepo']['edits'])} edits, not {n}.")

                def one(k: int, model: str = model) -> int:
                    body = {"model": model, "prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": config.max_tokens}
                    return int(_post(url, body)["usage"]["completion_tokens"])

                for c in config.clients:
                    cells.append({"edits": n, "clients": c, **_concurrently(c, config.requests, one)})
    finally:
        server.close()
    return {"repo": str(repo.root), "edits": list(config.edits), "clients": list(config.clients),
            "requests_per_client": config.requests, "max_tokens": config.max_tokens, "workers": config.workers,
            "max_batch": config.max_batch, "batches": {str(k): v for k, v in sorted(server.batcher.batch_sizes.items())},
            "torch_threads": torch.get_num_threads(), "baseline": baseline, "server": cells,
            "first_request_s": first}

