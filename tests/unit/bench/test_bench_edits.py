"""The edit benchmark driver, with a small test-only edit method (a rank-one write at the last layer)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cathrepo.bench.edits import EditBenchConfig, bench_edits
from cathrepo.bench.scoring import summarize
from cathrepo.edits.base import EDIT_METHODS, EditEnv, EditMethod, EditResult
from tests.helpers import changed_weights, snapshot

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


def _prefers_new(model, tok, fact) -> bool:
    """Whether the new target's mean token log-probability beats the true one's on the rewrite prompt."""
    from cathrepo.lm.scoring import target_logprobs

    new, old = target_logprobs(model, tok, [fact.prompt] * 2, [fact.target_new, fact.target_true])
    return sum(new) / len(new) > sum(old) / len(old)


def test_independent_edits_report_every_field(tiny_llama, data):
    from cathrepo.facts.schema import load_facts

    model, tok, path = tiny_llama
    before = snapshot(model)
    result = bench_edits(_config(path, data))
    out = result.to_dict()
    for key in FIELDS:
        assert key in out
    assert out["n"] == 3 and out["method"] == "oracle-test"
    assert out["es"] == 1.0  # the oracle makes the new target win on the rewrite prompt
    # ES of the unedited model: the share of records whose new target already wins, scored here directly
    facts = load_facts(data)
    assert out["unedited"]["es"] == sum(_prefers_new(model, tok, f) for f in facts) / len(facts)
    assert out["retention"] is None
    assert len(out["records"]) == 3 and len(out["edit_seconds"]) == 3
    assert out["nkl"] > 0.0 and out["unedited"]["nkl"] is None  # the writes reach the neighbours' next token
    assert out["peak_rss_mb"] > 0
    assert out["adapter_bytes"] == out["records"][0]["adapter_bytes"] > 0  # float32 A and B of the delta
    assert not changed_weights(model, before)  # the fixture's own copy untouched


def _top1(model, tok, prompts, *deltas) -> list[int]:
    """The greedy next token after each prompt, from plain forward passes with ``deltas`` merged."""
    import torch

    from cathrepo.delta import applied

    out = []
    with torch.no_grad(), applied(model, *deltas):
        for prompt in prompts:
            out.append(int(model(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].argmax()))
    return out


def test_sequential_edits_add_retention(tiny_llama, data):
    """The three edits are stacked, each computed on the model with the earlier ones in place; the
    retention and norm growth of the stack are recomputed here from the same deltas by plain forward
    passes and norms."""
    from cathrepo.delta import applied
    from cathrepo.facts.probes import load_known_facts
    from cathrepo.facts.schema import load_facts
    from cathrepo.models import family_for, get_module, num_layers

    model, tok, path = tiny_llama
    out = bench_edits(_config(path, data, sequential=True, retention_sample=20, retention_known_only=False)).to_dict()
    assert out["sequential"] is True
    assert out["mmlu_before"] is None
    oracle, deltas = OracleTestMethod(), []
    for fact in load_facts(data):
        with applied(model, *deltas):
            deltas.append(oracle.compute(model, tok, [fact], EditEnv()).delta)
    assert out["adapter_bytes"] == deltas[0].num_bytes()
    # retention: the share of the first 20 measured known facts whose greedy answer the stack keeps
    prompts = [k.prompt for k in load_known_facts(DATA / "known-sample.json", part="measure")[:20]]
    kept = [a == b for a, b in zip(_top1(model, tok, prompts), _top1(model, tok, prompts, *deltas), strict=True)]
    assert 0 < sum(kept) < len(kept)  # the stack changes some answers and keeps others
    assert out["retention"] == pytest.approx(sum(kept) / len(kept))
    # norm growth: the three writes all land on the last MLP output projection
    name = family_for(model).layer_name("mlp_out", num_layers(model) - 1)
    weight = get_module(model, name).weight.detach().float()
    stacked = weight + sum(d.factors[name].full() for d in deltas)
    assert out["norm_growth"] == pytest.approx(float(stacked.norm() / weight.norm() - 1.0), rel=1e-4)


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


def test_batches_are_one_call_each_and_perplexity_is_reported(tiny_llama, data, corpus):
    """``--batch-size 2`` over three records: MEMIT is called on [1, 2] and [3], the stack is scored as
    a whole, and the held-out perplexity before and after comes with retention."""
    calls = []
    from cathrepo.edits.memit.method import MemitMethod

    original = MemitMethod.compute

    def counting(self, model, tokenizer, facts, env):
        calls.append(len(facts))
        return original(self, model, tokenizer, facts, env)

    _, _, path = tiny_llama
    params = {"layers": [1, 2], "corpus_tokens": 400, "n_context": 1, "context_tokens": 4, "mom2_weight": 1.0,
              "phrasings": 0, "clamp_norm_factor": 10.0, "v_weight_decay": 0.0}
    MemitMethod.compute = counting
    try:
        out = bench_edits(_config(path, data, method="memit", params=params, corpus=corpus, sequential=True,
                                  edit_batch=2, retention_sample=20, retention_known_only=False)).to_dict()
    finally:
        MemitMethod.compute = original
    assert calls == [2, 1]
    assert len(out["records"]) == 3 and len(out["edit_seconds"]) == 3
    assert out["edit_seconds"][0] == out["edit_seconds"][1]  # a batch's time is shared by its facts
    assert out["perplexity_before"] > 1.0 and out["perplexity_after"] > 1.0
    assert out["perplexity_after"] != out["perplexity_before"]


def test_chat_prompts_use_the_template_when_there_is_one():
    from cathrepo.bench.scoring import chat_prompts

    class Chat:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return f"<user>{messages[0]['content']}</user><assistant>"

    assert chat_prompts(Chat(), ["Rome is the capital of"]) == ["<user>Complete this sentence: Rome is the capital of</user><assistant>"]

    class Plain:
        chat_template = None

    assert chat_prompts(Plain(), ["Rome is the capital of"]) == []


def test_checkpoints_measure_part_way_without_changing_the_run(tiny_llama, data):
    """Checkpoints after 1 and 2 of 3 sequential edits: each is measured on the records edited so far
    and reported as it comes; the last is the end's own numbers, and the run ends exactly as one without
    checkpoints (the stack is taken off and put back addition by addition)."""
    _, _, path = tiny_llama
    seen = []
    kw = {"sequential": True, "retention_sample": 20, "retention_known_only": False}
    plain = bench_edits(_config(path, data, **kw)).to_dict()
    out = bench_edits(_config(path, data, checkpoints=(2, 1, 7), **kw), on_checkpoint=seen.append).to_dict()
    assert [p["edits"] for p in seen] == [1, 2, 3] and out["checkpoints"] == seen
    assert plain["records"] == out["records"]
    assert {k: out[k] for k in ("es", "ps", "ns", "retention", "norm_growth")} == \
        {k: seen[-1][k] for k in ("es", "ps", "ns", "retention", "norm_growth")}
    assert seen[0]["es"] == out["records"][0]["es"]  # after one edit: that edit's own record alone
    assert seen[0]["norm_growth"] < seen[-1]["norm_growth"]
    assert seen[-1]["unedited"] == out["unedited"]  # each checkpoint carries its records' unedited scores
    assert seen[0]["unedited"]["es"] in (0.0, 1.0)


def test_a_cut_sequential_run_resumes_from_its_saved_state(tiny_llama, data, tmp_path):
    """--state: the stack saved at the checkpoint after 2 of 3 edits; a run started again with it loads
    those edits and computes only the third, and ends exactly as the uncut run (records, checkpoints)."""
    import json

    from cathrepo.exceptions import InvalidInputError

    _, _, path = tiny_llama
    state = tmp_path / "state"
    kw = {"sequential": True, "retention_sample": 20, "retention_known_only": False, "checkpoints": (2,)}
    whole = bench_edits(_config(path, data, state=state, **kw)).to_dict()
    saved = json.loads((state / "state.json").read_text())
    assert saved["done"] == 2 and saved["edits"] == 2 and (state / "deltas" / "0001" / "adapter_config.json").is_file()
    resumed = bench_edits(_config(path, data, state=state, **kw)).to_dict()  # as if cut after the checkpoint
    assert len(resumed["edit_seconds"]) == 3 and resumed["edit_seconds"][:2] == whole["edit_seconds"][:2]
    def untimed(rows):  # the seconds differ run to run; every measured number must not
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]

    assert untimed(resumed["records"]) == untimed(whole["records"])
    assert untimed(resumed["checkpoints"]) == untimed(whole["checkpoints"])
    with pytest.raises(InvalidInputError, match="another run"):
        bench_edits(_config(path, data, state=state, **{**kw, "skip": 1}))


def test_save_every_saves_the_stack_between_checkpoints_unmeasured(tiny_llama, data, tmp_path):
    """--save-every: with no checkpoint before the end, the stack is still saved after every second edit
    (nothing measured there), and a run started again from it ends exactly as the uncut run."""
    import json

    _, _, path = tiny_llama
    state = tmp_path / "state"
    kw = {"sequential": True, "retention_sample": 20, "retention_known_only": False, "save_every": 2}
    whole = bench_edits(_config(path, data, state=state, **kw)).to_dict()
    saved = json.loads((state / "state.json").read_text())
    assert saved["done"] == 2 and saved["edits"] == 2 and saved["checkpoints"] == []
    resumed = bench_edits(_config(path, data, state=state, **kw)).to_dict()
    assert resumed["edit_seconds"][:2] == whole["edit_seconds"][:2]  # read back, not recomputed
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in resumed["records"]] == \
        [{k: v for k, v in r.items() if "seconds" not in k} for r in whole["records"]]


def test_bench_stack_measures_a_saved_stack_as_the_run_did_and_restrained(tiny_llama, data, tmp_path):
    """bench stack: the stack of the first 2 edits read back from the run's --state measures what the
    run's own checkpoint at 2 measured; restrained far above its singular values it is unchanged, and
    restrained at a millionth of the base weights' norm it is all but gone (the norm growth with it)."""
    from cathrepo.bench.stack import StackBenchConfig, bench_stack
    from cathrepo.exceptions import InvalidInputError

    _, _, path = tiny_llama
    kw = {"sequential": True, "retention_sample": 20, "retention_known_only": False, "checkpoints": (2,),
          "state": tmp_path / "state"}
    run = _config(path, data, **kw)
    point = bench_edits(run).checkpoints[0]
    keys = ("es", "ps", "ns", "gen_success", "retention", "perplexity_after")
    wide = bench_stack(StackBenchConfig(run=run, at=(2,), rules=("clip", "prune"), factor=1e6))["rows"][0]
    assert wide["edits"] == 2 and wide["records"] == 2
    # perplexity to float rounding (the stack read back is applied summed, the run applied it edit by edit)
    assert {k: wide["stack"][k] for k in keys} == pytest.approx({k: point[k] for k in keys}, rel=1e-6, abs=1e-6)
    assert wide["stack"]["norm_growth"] == pytest.approx(point["norm_growth"], rel=1e-4)
    for rule in ("clip", "prune"):
        assert set(wide[rule]["above"].values()) == {0}
        assert {k: wide[rule][k] for k in keys} == pytest.approx({k: point[k] for k in keys}, rel=1e-6, abs=1e-6)
    tight = bench_stack(StackBenchConfig(run=run, at=(2,), factor=1e-6))["rows"][0]
    assert min(tight["clip"]["above"].values()) >= 1 and tight["clip"]["norm_growth"] < 1e-4 < point["norm_growth"]
    with pytest.raises(InvalidInputError, match="holds 2 edits"):
        bench_stack(StackBenchConfig(run=run, at=(3,)))


def test_a_restrained_sequential_run_carries_the_stack_held_at_the_base_norm(tiny_llama, data, tmp_path):
    """--restrain: far above the stack's singular values the run is the plain run; at a millionth of
    the base weights' norm the stack carried and measured is all but gone. The run's saved state is
    keyed by the restraint (a plain run cannot resume from it)."""
    from cathrepo.exceptions import InvalidInputError

    _, _, path = tiny_llama
    kw = {"sequential": True, "retention_sample": 20, "retention_known_only": False}
    plain = bench_edits(_config(path, data, **kw)).to_dict()
    wide = bench_edits(_config(path, data, restrain="clip", restrain_factor=1e6, **kw)).to_dict()
    keys = ("es", "ps", "ns", "retention", "perplexity_after")
    assert {k: wide[k] for k in keys} == pytest.approx({k: plain[k] for k in keys}, abs=1e-6)
    assert wide["norm_growth"] == pytest.approx(plain["norm_growth"], rel=1e-4)
    state = tmp_path / "state"
    tight = bench_edits(_config(path, data, restrain="clip", restrain_factor=1e-6, checkpoints=(2,), state=state,
                                **kw)).to_dict()
    assert tight["norm_growth"] < 1e-4 < plain["norm_growth"]
    with pytest.raises(InvalidInputError, match="another run"):
        bench_edits(_config(path, data, checkpoints=(2,), state=state, **kw))
