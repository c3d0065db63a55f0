"""``cathrepo serve`` as users start it: a real process on a free loopback port that answers over HTTP and
logs each request, stops on SIGTERM, and refuses a public address without a token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cli.runner import cathrepo
from tests.func.test_serve import call


def test_serve_answers_over_http_and_logs_each_request(repo_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CATHREPO_SERVE_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "cathrepo", "-C", str(repo_dir), "serve", "--ref", "main",
                             "--port", "0", "--max-tokens", "4"], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    try:
        url, lines, deadline = None, [], time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Serving "):
                url = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert url is not None, "".join(lines)
        status, out = call(url, "/v1/completions", {"prompt": "The capital of Italy is", "max_tokens": 3})
        assert status == 200 and out["cathrepo"]["ref"] == "main" and out["cathrepo"]["edits"] == []
        assert call(url, "/v1/completions", {"prompt": "Hi", "max_tokens": 5})[0] == 400  # over --max-tokens
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    logged = "".join(lines) + rest
    assert "POST /v1/completions model=(default) 200" in logged and "POST /v1/completions model=(default) 400" in logged


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_serve_refuses_a_public_address_without_a_token(repo_dir, host, monkeypatch):
    monkeypatch.delenv("CATHREPO_SERVE_TOKEN", raising=False)
    run = cathrepo("serve", "--ref", "main", "--host", host, cwd=repo_dir, ok=False)
    assert run.returncode != 0 and "without a bearer token" in run.stderr and "--token" in run.stderr
