"""The edit benchmark driver, with a small test-only edit method (a rank-one write at the last layer)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cathrepo.bench.edits import EditBenchConfig, bench_edits, summarize
from cathrepo.edits.base import EDIT_METHODS, EditEnv, EditMethod, EditResult

DATA = Path(__file__).parents[2] / "data"
FIELDS = ("n", "method", "model", "es", "ps", "ns", "s", "ns_plus", "nkl", "gen_success", "retention",
          "mmlu_before", "mmlu_after", "seconds_per_edit", "peak_rss_mb")


class _Params:
    strength: float = 200.0


class OracleTestMethod(EditMethod):
    """Test-only: ΔW = c·û kᵀ/|k|² on the last MLP output projection, û = unembedding(new) − unembedding(old)."""

    name = "oracle-test"
    params_cls = _Params

    def compute(self, model, tokenizer, facts, env: EditEnv) -> EditResult:
        import torch

        from cathrepo.delta import Delta, LowRank
        from cathrepo.lm.hooks import forward_until
        from cathrepo.lm.tokens import first_token_id
        from cathrepo.models import family_for, num_layers

        (fact,) = facts
        name = family_for(model).layer_name("mlp_out", num_layers(model) - 1)
        ids = tokenizer(fact.prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            key = forward_until(model, name, inputs=True, input_ids=ids)[0, -1].float()
        unembed = model.get_output_embeddings().weight.detach().float()
        u = unembed[first_token_id(tokenizer, fact.target_new)] - unembed[first_token_id(tokenizer, fact.target_true)]
        if float(u.norm()) == 0.0:  # both start with the same token (a bare space in the tiny tokenizer)
            u = unembed[first_token_id(tokenizer, fact.target_new)]
        delta = Delta({name: LowRank((self.params.strength * u / u.norm())[:, None], (key / key.norm() ** 2)[None, :])})
        return EditResult(delta=delta, site={"modules": [name]})


@pytest.fixture(scope="module", autouse=True)
def registered():
    if "oracle-test" not in EDIT_METHODS:
        EDIT_METHODS.register(OracleTestMethod)
    yield


# Targets that the tiny test tokenizer keeps as single tokens, so a first-token write decides them.
RECORDS = [
    {"case_id": 1, "prompt": "The Eiffel Tower is located in the city of", "subject": "The Eiffel Tower",
     "target_new": "Rome", "ground_truth": "Paris", "rephrase_prompt": "Where is The Eiffel Tower? It is in",
     "locality_prompt": "The Louvre is located in the city of", "locality_ground_truth": "Paris"},
    {"case_id": 2, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
     "target_new": "German", "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux is a native speaker of",
     "locality_prompt": "The mother tongue of Michel Rocard is", "locality_ground_truth": "French"},
    {"case_id": 3, "prompt": "Rome is the capital of", "subject": "Rome", "target_new": "French",
     "ground_truth": "Paris", "rephrase_prompt": "The capital city of Rome is",
     "locality_prompt": "Berlin is the capital of", "locality_ground_truth": "German"},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("bench") / "records.json"
    path.write_text(json.dumps(RECORDS))
    return path


def _config(path, data, **kw):
    kw = {"method": "oracle-test", **kw}
    return EditBenchConfig(data=data, n=3, model=str(path), known=DATA / "known-sample.json", n_neighbors=1,
                           generation_tokens=4, mmlu=False, **kw)


def test_independent_edits_report_every_field(tiny_llama, data):
    model, _, path = tiny_llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = bench_edits(_config(path, data))
    out = result.to_dict()
    for key in FIELDS:
        assert key in out
    assert out["n"] == 3 and out["method"] == "oracle-test"
    assert out["es"] == 1.0  # the oracle makes the new target win on the rewrite prompt
    assert out["unedited"]["es"] is not None and out["retention"] is None
    assert len(out["records"]) == 3 and len(out["edit_seconds"]) == 3
    assert out["nkl"] >= 0.0 and out["unedited"]["nkl"] is None
    assert out["peak_rss_mb"] > 0
    assert out["adapter_bytes"] == out["records"][0]["adapter_bytes"] > 0  # float32 A and B of the delta
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())  # the fixture's own copy untouched


def test_sequential_edits_add_retention(tiny_llama, data):
    _, _, path = tiny_llama
    out = bench_edits(_config(path, data, sequential=True, retention_sample=20, retention_known_only=False)).to_dict()
    assert out["sequential"] is True
    assert 0.0 <= out["retention"] <= 1.0
    assert out["norm_growth"] > 0.0
    assert out["mmlu_before"] is None
    assert out["adapter_bytes"] > 0


def test_method_none_scores_the_unedited_model(tiny_llama, data):
    _, _, path = tiny_llama
    out = bench_edits(_config(path, data, method="none")).to_dict()
    assert out["seconds_per_edit"] is None
    assert {k: out[k] for k in ("es", "ps", "ns")} == {k: out["unedited"][k] for k in ("es", "ps", "ns")}


def test_summary_harmonic_mean():
    s = summarize([{"es": 1.0, "ps": 0.5, "ns": 0.5}, {"es": 1.0, "ps": 1.0, "ns": 0.5}])
    assert s["es"] == 1.0 and s["ps"] == 0.75 and s["ns"] == 0.5
    assert math.isclose(s["s"], 3 / (1 / 1.0 + 1 / 0.75 + 1 / 0.5))
    assert summarize([{"es": 0.0, "ps": 1.0, "ns": 1.0}])["s"] == 0.0
