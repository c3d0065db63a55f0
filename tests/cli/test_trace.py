"""``cathrepo trace`` end to end on a tiny model directory: scores JSON and PNG heatmaps."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cathrepo.cli import cli


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a busy 2-core machine: threads only add waiting
    yield
    torch.set_num_threads(before)


def test_trace_writes_scores_and_pngs(tiny_llama, tmp_path):
    _, _, model_dir = tiny_llama
    out = tmp_path / "trace"
    result = CliRunner().invoke(cli, [
        "trace", "--prompt", "I know that the Eiffel Tower is located in", "--subject", "the Eiffel Tower",
        "--target", "Paris", "--model", str(model_dir), "--out", str(out), "--components", "mlp",
        "--samples", "1", "--method", "all",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "scores.json").read_text())
    assert set(data) == {"causal_trace", "patching", "saliency"}
    assert len(data["causal_trace"]["scores"]["mlp"]) == 4
    assert (out / "causal_trace-mlp.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "patching.png").is_file() and "wrote" in result.output


def test_trace_refuses_a_missing_subject(tiny_llama, tmp_path):
    _, _, model_dir = tiny_llama
    result = CliRunner().invoke(cli, ["trace", "--prompt", "Rome is in", "--subject", "Paris",
                                      "--model", str(model_dir), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "does not occur" in str(result.exception)
