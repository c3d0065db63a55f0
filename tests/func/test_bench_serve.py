"""``cathrepo bench serve`` on a tiny model: the repository gets a tag per active-set size, the server
serves each as a model with that many edits, and every cell of the grid and the baseline is measured."""

from __future__ import annotations

import pytest

from cathrepo.bench.serve import ServeBenchConfig, bench_serve
from cathrepo.exceptions import InvalidInputError
from cathrepo.repo import Repo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_serve_measures_every_cell_against_the_baseline(tmp_path, tiny_llama):
    _, _, model_dir = tiny_llama
    config = ServeBenchConfig(repo=tmp_path / "bench", edits=(0, 3), clients=(1, 3), requests=2, max_tokens=4,
                              base=str(model_dir))
    out = bench_serve(config)
    repo = Repo.open(config.repo)
    assert [len(repo.stack(f"bench-serve-{n}").active) for n in (0, 3)] == [0, 3]
    assert [r["clients"] for r in out["baseline"]["threads"]] == [r["clients"] for r in out["baseline"]["batched"]] == [1, 3]
    assert [(r["edits"], r["clients"]) for r in out["server"]] == [(0, 1), (0, 3), (3, 1), (3, 3)]
    assert sum(int(size) * n for size, n in out["batches"].items()) == 2 + 2 * (2 + 6)  # every request decoded
    for row in out["baseline"]["threads"] + out["baseline"]["batched"] + out["server"]:
        assert row["errors"] == 0 and row["requests"] == 2 * row["clients"], row
        assert 0 < row["median_s"] <= row["p90_s"] and row["requests_per_s"] > 0 and row["tokens_per_s"] > 0
    assert set(out["first_request_s"]) == {"0", "3"}
    again = bench_serve(config)  # the tags are there: nothing is built twice
    assert len(Repo.open(config.repo).stack().active) == 3 and len(again["server"]) == 4
    with pytest.raises(InvalidInputError, match="more than 2"):
        bench_serve(ServeBenchConfig(repo=config.repo, edits=(2,), clients=(1,), requests=1, max_tokens=2))
