"""MEMIT on tiny random-init models: compute never mutates, one rank-n update per layer, the least-squares
update delivers the residuals at the batch's keys, preserved keys are left exactly alone, the edit works."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cathrepo.delta import applied
from cathrepo.edits.base import EditEnv, get_method
from cathrepo.edits.memit.method import read_keys, spread_update
from cathrepo.edits.memit.params import MemitParams
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.lm.scoring import mean_logprob
from cathrepo.models import family_for
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

# As in the ROME tests: on random-init models the subject goes last, where the target is predicted.
FACTS = [
    Fact(prompt="The capital of Italy is Rome", subject="Rome", target_new="Paris", target_true="Tokyo"),
    Fact(prompt="The city of France is Paris", subject="Paris", target_new="Italy", target_true="Rome"),
]


@pytest.fixture
def env(tmp_path, corpus):
    return EditEnv(base_hash="tiny", cache_dir=tmp_path / "cache", corpus=corpus)


def _params(model, **kw):
    base = {"layers": [1, 2], "corpus_tokens": 500, "n_context": 2, "context_tokens": 4, "v_steps": 40,
            "clamp_norm_factor": 10.0, "v_weight_decay": 0.0, "mom2_weight": 1.0, "phrasings": 0}
    return get_method("memit").params_for(model, {**base, **kw})


def test_compute_leaves_model_bit_identical_and_writes_each_layer(tiny_model, env):
    model, tok, _ = tiny_model
    before = snapshot(model)
    result = get_method("memit")(_params(model)).compute(model, tok, FACTS, env)
    assert not changed_weights(model, before)
    family = family_for(model)
    assert result.delta.modules == sorted(family.layer_name("mlp_out", i) for i in (1, 2))
    assert all(f.rank == len(FACTS) for f in result.delta.factors.values())
    assert result.site["layers"] == [1, 2]
    assert result.info["residual_left"] < result.info["layers"][0]["residual_norm"]


def test_batch_makes_every_target_preferred(tiny_llama, env):
    model, tok, _ = tiny_llama
    result = get_method("memit")(_params(model)).compute(model, tok, FACTS, env)
    prompts = [f.prompt for f in FACTS for _ in range(2)]
    targets = [t for f in FACTS for t in (f.target_new, f.target_true)]
    old = mean_logprob(model, tok, prompts, targets)
    with applied(model, result.delta):
        new = mean_logprob(model, tok, prompts, targets)
    for i in range(len(FACTS)):
        assert new[2 * i] > old[2 * i] + 0.5
        assert new[2 * i] > new[2 * i + 1]


def test_spread_update_delivers_the_residuals_at_the_keys():
    """With a small corpus weight, ΔW = R A maps each key to its residual (least squares, exact at n ≤ d)."""
    gen = torch.Generator().manual_seed(0)
    d, n = 16, 3
    x = torch.randn(200, d, generator=gen)
    cov = x.T @ x / 200
    keys = torch.randn(n, d, generator=gen)
    residuals = torch.randn(n, 5, generator=gen)
    a = spread_update(cov, keys, weight=1e-6, reg=1e-2)
    assert a.shape == (n, d)
    assert torch.allclose((residuals.T @ a) @ keys.T, residuals.T, atol=1e-3)
    # a heavy corpus weight shrinks the update: the corpus keys are disturbed less
    heavy = spread_update(cov, keys, weight=1e3, reg=1e-2)
    assert (residuals.T @ heavy).norm() < 0.1 * (residuals.T @ a).norm()


def test_spread_update_leaves_preserved_keys_alone():
    gen = torch.Generator().manual_seed(1)
    d, n = 16, 2
    cov = torch.eye(d)
    keys = torch.randn(n, d, generator=gen)
    preserved = torch.randn(4, d, generator=gen)
    a = spread_update(cov, keys, weight=1e-3, reg=1e-2, preserved=preserved)
    assert (a @ preserved.T).abs().max() < 1e-2 * (a @ keys.T).abs().max()
    # the batch's own keys are still written (only their part off the preserved span is usable)
    assert (a @ keys.T).diagonal().abs().min() > 0.1


def test_active_edits_keys_are_held(tiny_llama, env):
    """An active edit's prompt (env.kept) reads no change from the lowest layer's update."""
    model, tok, _ = tiny_llama
    kept = (("The capital of Spain is Madrid", "Madrid"),)
    result = get_method("memit")(_params(model)).compute(model, tok, FACTS, dataclasses.replace(env, kept=kept))
    assert result.info["kept_keys"] == 1 and result.info["layers"][0]["preserved_keys"] == 1
    module = family_for(model).layer_name("mlp_out", 1)
    keys, _ = read_keys(model, tok, module, family_for(model).layer_name("layer", 2),
                        [Fact(prompt=kept[0][0], subject=kept[0][1], target_new="x")], [""])
    factor = result.delta.factors[module]
    own, _ = read_keys(model, tok, module, family_for(model).layer_name("layer", 2), FACTS, [""])
    assert (factor.A @ keys[0]).abs().max() < 1e-2 * (factor.A @ own.T).abs().max()


def test_corpus_rank_holds_the_top_corpus_directions(tiny_llama, env):
    """With corpus_rank k, every layer's update reads nothing along the k top eigenvectors of that
    layer's key second moment, and the batch is still written."""
    from cathrepo.edits.memit.method import corpus_directions
    from cathrepo.edits.rome.covariance import key_covariance

    model, tok, _ = tiny_llama
    result = get_method("memit")(_params(model, corpus_rank=4)).compute(model, tok, FACTS, env)
    module = family_for(model).layer_name("mlp_out", 1)
    cov, _ = key_covariance(model, tok, module, corpus=env.corpus, max_tokens=_params(model).corpus_tokens,
                            cache=env.cache_dir, base_hash=env.base_hash)
    top = corpus_directions(cov, 4)
    assert top.shape[0] == 4 and result.info["layers"][0]["preserved_keys"] == 4
    factor = result.delta.factors[module]
    own, _ = read_keys(model, tok, module, family_for(model).layer_name("layer", 2), FACTS, [""])
    assert (factor.A @ top.T).abs().max() < 1e-2 * (factor.A @ own.T).abs().max()
    with pytest.raises(InvalidInputError, match="corpus_rank"):
        MemitParams(corpus_rank=-1)
    with pytest.raises(InvalidInputError, match="nothing would be left"):
        get_method("memit")(_params(model, corpus_rank=10_000)).compute(model, tok, FACTS, env)


def test_params_validate_and_parse_layers(tiny_llama):
    model, _, _ = tiny_llama
    assert MemitParams(layers="3,1,2").layers == (1, 2, 3)
    assert MemitParams(layers=[4]).edit_layers(9) == (4,)
    assert MemitParams(span=3).edit_layers(6) == (4, 5, 6)
    assert MemitParams(span=3).edit_layers(1) == (0, 1)
    for bad in ({"layers": "a,b"}, {"layers": [1, 1]}, {"layers": [-1]}, {"mom2_weight": 0.0}, {"v_solver": "x"}):
        with pytest.raises(InvalidInputError):
            MemitParams(**bad)
    with pytest.raises(InvalidInputError, match="does not exist"):
        get_method("memit")(_params(model, layers=[99])).compute(model, None, FACTS, EditEnv())
    with pytest.raises(InvalidInputError, match="forget"):
        forget = Fact(prompt="The capital of Italy is Rome", subject="Rome", target_new="Paris", action="forget")
        get_method("memit")(_params(model)).compute(model, None, [forget], EditEnv())
