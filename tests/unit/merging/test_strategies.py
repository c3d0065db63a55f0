"""Merge strategies compute on each module's full ΔW: cat is exact, svd is the best rank-R fit with its
error reported, TIES and DARE are deterministic and differ from merging the factors separately, clip and
prune hold the sum at a multiple of the base weight's spectral norm."""

from __future__ import annotations

import pytest
import torch

from cathrepo.delta import Delta, LowRank
from cathrepo.exceptions import CathrepoError, InvalidInputError, UnknownNameError
from cathrepo.merging.consolidate import consolidate
from cathrepo.merging.factor import factor_dense, factor_product, stacked
from cathrepo.merging.strategies import STRATEGIES, Cat, Clip, Dare, Prune, Svd, Ties, get_strategy

OUT, IN = 6, 10
M, N = "model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"


def _factor(rank: int, seed: int, shape: tuple[int, int] = (OUT, IN), scale: float = 0.5) -> LowRank:
    gen = torch.Generator().manual_seed(seed)
    return LowRank(torch.randn(shape[0], rank, generator=gen), torch.randn(rank, shape[1], generator=gen), scale)


def _delta(rank: int = 1, seed: int = 0, modules: tuple[str, ...] = (M,)) -> Delta:
    return Delta({name: _factor(rank, seed + 100 * i) for i, name in enumerate(modules)})


def _full(delta: Delta, name: str = M) -> torch.Tensor:
    return delta.factors[name].full()


def _summed(deltas: list[Delta], weights: list[float] | None = None, name: str = M) -> torch.Tensor:
    weights = weights or [1.0] * len(deltas)
    return sum(w * _full(d, name) for d, w in zip(deltas, weights, strict=True) if name in d.factors)


# --- cat ------------------------------------------------------------------------------------------


def test_cat_is_the_exact_sum_and_the_ranks_add():
    deltas = [_delta(1, 0), _delta(2, 1), _delta(3, 2)]
    pack = consolidate(deltas, "cat")
    assert pack.ranks == {M: 6} and pack.errors == {M: 0.0} and pack.strategy == "cat"
    torch.testing.assert_close(_full(pack.delta), _summed(deltas), rtol=1e-5, atol=1e-5)


def test_cat_of_one_delta_at_weight_one_is_that_delta_bit_for_bit():
    delta = _delta(2, 0, modules=(M, N))
    pack = consolidate([delta], "cat")
    for name in (M, N):
        assert pack.delta.factors[name] is delta.factors[name]


def test_a_module_only_one_delta_touches_keeps_its_factors():
    only_m, both = _delta(1, 0, modules=(M,)), _delta(1, 5, modules=(M, N))
    pack = consolidate([only_m, both], "cat")
    assert pack.delta.factors[N] is both.factors[N]


def test_weights_scale_each_delta_before_merging():
    deltas, weights = [_delta(1, 0), _delta(2, 1)], [2.0, -0.5]
    expected = _summed(deltas, weights)
    for spec in ("cat", "svd:8"):
        torch.testing.assert_close(_full(consolidate(deltas, spec, weights).delta), expected, rtol=1e-5, atol=1e-5)
    single = consolidate([deltas[0]], "cat", [0.25]).delta.factors[M]
    assert torch.equal(single.B, deltas[0].factors[M].B) and single.scale == 0.125


def test_modules_combine_module_wise():
    deltas = [_delta(1, 0, modules=(M,)), _delta(1, 1, modules=(M, N)), _delta(2, 2, modules=("x.proj",))]
    for spec in ("cat", "svd:4"):
        pack = consolidate(deltas, spec)
        assert pack.delta.modules == sorted([M, N, "x.proj"])
        for name in pack.delta.modules:
            torch.testing.assert_close(_full(pack.delta, name), _summed(deltas, name=name), rtol=1e-5, atol=1e-5)


# --- svd ------------------------------------------------------------------------------------------


def test_svd_keeps_the_best_rank_r_fit_and_reports_its_error():
    deltas = [_delta(2, 0), _delta(2, 1)]
    total = _summed(deltas).double()
    pack = consolidate(deltas, "svd:2")
    kept = _full(pack.delta).double()
    s = torch.linalg.svdvals(total)
    expected = float(s[2:].square().sum().sqrt() / s.square().sum().sqrt())  # Eckart–Young
    assert pack.ranks == {M: 2}
    assert pack.errors[M] == pytest.approx(float(torch.linalg.norm(total - kept) / torch.linalg.norm(total)), rel=1e-4)
    assert pack.errors[M] == pytest.approx(expected, rel=1e-6) and pack.max_error == pack.errors[M]


def test_svd_rank_is_capped_by_the_true_rank():
    base = _delta(2, 0)
    pack = consolidate([base, base, _delta(1, 3)], "svd:16")  # stacked rank 5, true rank 3
    assert pack.ranks == {M: 3} and pack.errors[M] < 1e-6


def test_a_small_edit_packed_with_a_large_one_is_kept():
    large, small = _delta(1, 0), _delta(1, 1)
    pack = consolidate([large, small], "svd:8", [1.0, 1e-6])
    assert pack.ranks == {M: 2} and pack.errors[M] < 1e-9


def test_merging_the_factors_separately_is_not_the_same():
    deltas, half = [_delta(2, 0), _delta(2, 1)], [0.5, 0.5]
    mean = 0.5 * (_full(deltas[0]) + _full(deltas[1]))
    f0, f1 = deltas[0].factors[M], deltas[1].factors[M]
    naive = ((f0.B + f1.B) / 2) @ ((f0.A + f1.A) / 2) * 0.5  # cross terms B₀A₁, B₁A₀
    for spec in ("cat", "svd:4"):
        merged = _full(consolidate(deltas, spec, half).delta)
        torch.testing.assert_close(merged, mean, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(merged, naive, atol=1e-2)


def test_the_low_rank_svd_equals_the_dense_one():
    factors, weights = [_factor(2, 0, (40, 30)), _factor(3, 1, (40, 30))], [1.0, -2.0]
    b, a = stacked(factors, weights)
    for rank in (2, 5, 8):
        cheap, full = factor_product(b, a, rank), factor_dense(b @ a, rank)
        assert cheap.factor.rank == full.factor.rank == min(rank, 5)
        assert cheap.error == pytest.approx(full.error, abs=1e-9)
        torch.testing.assert_close(cheap.factor.full(), full.factor.full(), rtol=1e-5, atol=1e-5)


def test_a_zero_sum_still_gives_a_rank_one_delta():
    delta = _delta(2, 0)
    pack = consolidate([delta, delta], "svd:4", [1.0, -1.0])
    assert pack.ranks == {M: 1} and pack.errors == {M: 0.0}
    assert torch.count_nonzero(_full(pack.delta)) == 0


# --- ties / dare ----------------------------------------------------------------------------------


def _dense_delta(matrix: list[list[float]]) -> Delta:
    b = torch.tensor(matrix)
    return Delta({M: LowRank(b, torch.eye(b.shape[1]))})


def test_ties_trims_elects_and_averages_the_full_updates():
    deltas = [_dense_delta([[3, -1], [0.5, 2]]), _dense_delta([[-1, -4], [2, 0.1]]),
              _dense_delta([[1, 0.2], [-3, 0.3]])]
    # top half of each: [[3,0],[0,2]], [[0,-4],[2,0]], [[1,0],[-3,0]]; signs of the sum: [[+,-],[-,+]]
    merged = consolidate(deltas, "ties:0.5,rank=2")
    torch.testing.assert_close(_full(merged.delta), torch.tensor([[2.0, -4.0], [-3.0, 2.0]]))
    assert merged.strategy == "ties:0.5,rank=2"


def test_ties_is_deterministic_and_not_factor_wise():
    deltas = [_delta(2, 0), _delta(2, 1), _delta(1, 2)]
    one, two = consolidate(deltas, "ties:0.3"), consolidate(deltas, "ties:0.3")
    assert torch.equal(one.delta.factors[M].B, two.delta.factors[M].B)
    assert one.ranks == {M: 5} and 0 < one.errors[M] < 1
    exact = _full(consolidate(deltas, f"ties:0.3,rank={OUT}").delta)
    factor_wise = _ties_on_factors(deltas, 0.3)
    assert not torch.allclose(exact, factor_wise, atol=1e-2)


def _ties_on_factors(deltas: list[Delta], density: float) -> torch.Tensor:
    """The fault to avoid: TIES on the B's and on the A's (zero-padded to one rank), then their product."""
    rank = max(d.factors[M].rank for d in deltas)
    pad = [LowRank(torch.nn.functional.pad(d.factors[M].B * d.factors[M].scale, (0, rank - d.factors[M].rank)),
                   torch.nn.functional.pad(d.factors[M].A, (0, 0, 0, rank - d.factors[M].rank))) for d in deltas]
    ties = Ties(density=density)
    b = ties.merge_module(M, [LowRank(p.B, torch.eye(rank)) for p in pad], [1.0] * len(pad)).factor.full()
    a = ties.merge_module(M, [LowRank(torch.eye(rank), p.A) for p in pad], [1.0] * len(pad)).factor.full()
    return b @ a


def test_dare_drops_entries_of_the_full_update_and_rescales_the_rest():
    delta = _delta(2, 0)
    full = _full(delta)
    merged = _full(consolidate([delta], f"dare:0.5,rank={OUT}").delta)
    kept = merged.abs() > 1e-6
    torch.testing.assert_close(merged[kept], full[kept] * 2, rtol=1e-4, atol=1e-5)
    assert 0.2 < kept.float().mean() < 0.8  # entry-wise drops: a factor-wise drop is not entry-wise


def test_dare_is_seeded_per_module():
    deltas = [_delta(1, 0, modules=(M, N)), _delta(1, 1, modules=(M,))]
    one, again = consolidate(deltas, "dare:0.5,seed=7"), consolidate(deltas, "dare:0.5,seed=7")
    other = consolidate(deltas, "dare:0.5,seed=8")
    alone = consolidate([Delta({M: d.factors[M]}) for d in deltas], "dare:0.5,seed=7")
    assert torch.equal(one.delta.factors[M].B, again.delta.factors[M].B)
    assert torch.equal(one.delta.factors[M].A, alone.delta.factors[M].A)
    assert not torch.allclose(_full(one.delta), _full(other.delta))


def test_dare_without_drops_is_the_sum():
    deltas = [_delta(1, 0), _delta(2, 1)]
    torch.testing.assert_close(_full(consolidate(deltas, "dare:0").delta), _summed(deltas), rtol=1e-5, atol=1e-5)


# --- clip and prune ------------------------------------------------------------------------------


def test_clip_holds_the_sum_at_the_base_norm_and_keeps_the_directions_under_it():
    deltas = [_delta(1, seed) for seed in range(4)]
    summed = _summed(deltas)
    s = torch.linalg.svdvals(summed.double())
    bound = float(s[1] + s[2]) / 2  # between the second and third singular values: two directions above
    done = consolidate(deltas, "clip:0.5", norms={M: 2 * bound})  # the bound is factor × norm
    got = torch.linalg.svdvals(_full(done.delta).double())
    torch.testing.assert_close(got[:2], torch.full((2,), bound, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2:4], s[2:4], rtol=1e-5, atol=1e-5)
    change = float(((s - s.clamp(max=bound)) ** 2).sum().sqrt() / (s ** 2).sum().sqrt())
    assert done.strategy == "clip:0.5" and done.errors[M] == pytest.approx(change, rel=1e-6) and change > 0


def test_clip_under_the_bound_is_the_sum_and_prune_shrinks_by_the_log():
    deltas = [_delta(1, 0), _delta(2, 1)]
    far = consolidate(deltas, "clip", norms={M: 1e6})
    torch.testing.assert_close(_full(far.delta), _summed(deltas), rtol=1e-5, atol=1e-5)
    assert far.errors[M] == 0.0
    top = float(torch.linalg.svdvals(_summed(deltas).double())[0])
    bound = top / 2
    pruned = consolidate(deltas, "prune", norms={M: bound})
    expected = torch.log(torch.tensor(top / bound)) + bound
    assert float(torch.linalg.svdvals(_full(pruned.delta).double())[0]) == pytest.approx(float(expected), rel=1e-5)


def test_clip_needs_every_module_norm_and_a_positive_factor():
    with pytest.raises(InvalidInputError, match="needs the base weights' spectral norms") as info:
        consolidate([_delta(), _delta(1, 1)], "clip")
    assert "through the repository" in info.value.hint
    with pytest.raises(InvalidInputError, match=f"no spectral norm of the base weight of {N}"):
        consolidate([_delta(modules=(M, N))], "prune:1", norms={M: 1.0})
    with pytest.raises(InvalidInputError, match="factor must be a positive number"):
        get_strategy("clip:0")
    assert consolidate([_delta()], "cat", norms={M: 1.0}).errors[M] == 0.0  # the others ignore norms


# --- specs and errors -----------------------------------------------------------------------------


def test_specs_parse_into_parameters_and_back():
    assert get_strategy("svd:8") == Svd(rank=8)
    assert get_strategy(" ties:0.2 ") == Ties(density=0.2)
    assert get_strategy("dare:0.3,seed=4,rank=2") == Dare(p=0.3, seed=4, rank=2)
    assert get_strategy("cat") == Cat()
    assert get_strategy("clip") == Clip(factor=1.0) and get_strategy("prune:0.5") == Prune(factor=0.5)
    for spec in ("cat", "svd:8", "ties:0.2", "ties:0.5,rank=3", "dare:0.5,seed=0", "clip:1.0", "prune:2.0"):
        assert get_strategy(spec).spec == spec
    assert {"cat", "svd", "ties", "dare", "clip", "prune"} <= set(STRATEGIES.names())


def test_an_unknown_strategy_suggests_the_closest():
    with pytest.raises(UnknownNameError) as info:
        consolidate([_delta()], "sdv:8")
    assert "Unknown merge strategy 'sdv'" in str(info.value) and info.value.hint == "Did you mean: svd?"


@pytest.mark.parametrize("spec, says", [
    ("svd", "needs a value for rank"), ("svd:", "rank has no value"), ("svd:x", "rank must be a positive integer, not 'x'"),
    ("svd:0", "rank must be a positive integer"), ("cat:2", "takes no argument"),
    ("ties:1.5", "density must be a fraction in (0, 1]"), ("dare:1", "p must be a probability in [0, 1)"),
    ("dare:0.5,speed=3", "unknown parameter 'speed'"), ("ties:0.2,0.3", "unknown parameter '0.3'"),
    ("svd:2,rank=3", "rank is given twice"),
])
def test_a_bad_argument_says_the_form(spec, says):
    with pytest.raises(InvalidInputError) as info:
        get_strategy(spec)
    assert says in info.value.message
    assert info.value.hint.startswith(f"Write it as {spec.split(':')[0]}")


def test_a_second_strategy_of_one_name_is_refused():
    class Another(Cat):
        pass

    with pytest.raises(CathrepoError, match="already registered"):
        STRATEGIES.register(Another)


def test_a_shape_mismatch_names_the_module():
    wide = Delta({M: _factor(1, 0, (OUT, IN + 1))})
    with pytest.raises(InvalidInputError, match=rf"Module '{M}' is 6×10 in delta 0 but 6×11 in delta 1"):
        consolidate([_delta(), wide], "cat")


def test_inputs_that_cannot_merge_are_refused():
    with pytest.raises(InvalidInputError, match="no deltas"):
        consolidate([], "cat")
    with pytest.raises(InvalidInputError, match="2 weights were given for 1 deltas"):
        consolidate([_delta()], "cat", [1.0, 2.0])
    with pytest.raises(InvalidInputError, match="finite"):
        consolidate([_delta()], "cat", [float("nan")])
    a, b = (Delta(_delta().factors, base) for base in ("org/a", "org/b"))
    with pytest.raises(InvalidInputError, match="different base models: org/a, org/b"):
        consolidate([a, b], "cat")
    assert consolidate([a, _delta()], "cat").delta.base_model == "org/a"


def test_clip_of_more_terms_than_the_matrix_is_wide_takes_the_dense_path_to_the_same_result():
    deltas = [_delta(1, seed) for seed in range(8)]  # rank 8 stacked on a 6×10 module: the dense path
    summed = _summed(deltas).double()
    bound = float(torch.linalg.svdvals(summed)[2])
    done = consolidate(deltas, "clip", norms={M: bound})
    u, s, vh = torch.linalg.svd(summed, full_matrices=False)
    expected = u @ torch.diag(s.clamp(max=bound)) @ vh
    torch.testing.assert_close(_full(done.delta).double(), expected, rtol=1e-5, atol=1e-5)
