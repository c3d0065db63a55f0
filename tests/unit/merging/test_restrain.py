"""``restrain``: a stack's singular directions above the base weight's spectral norm are clipped or
shrunk as PRUNE does; those under it are kept."""

from __future__ import annotations

import math

import pytest
import torch

from cathrepo.delta import Delta, LowRank
from cathrepo.exceptions import InvalidInputError
from cathrepo.merging.restrain import restrain

NAME = "model.layers.0.mlp.down_proj"


def _delta(values: list[float], out: int = 12, inp: int = 20, seed: int = 0) -> Delta:
    """A delta of exactly these singular values, as a stack of rank-one edits would leave it (factors of
    rank two more than needed, so the rule must see through the factoring)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, len(values), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, len(values), generator=gen, dtype=torch.float64))
    dense = u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T
    mix = torch.randn(len(values) + 2, len(values), generator=gen, dtype=torch.float64)
    b = dense @ torch.linalg.pinv(mix @ v.T)  # (out, r+2) @ (r+2, in) = dense
    return Delta({NAME: LowRank(b.float(), (mix @ v.T).float())})


def _singular(delta: Delta) -> list[float]:
    return torch.linalg.svdvals(delta.factors[NAME].full().double()).tolist()


def test_clip_holds_the_directions_above_the_bound_and_keeps_the_rest():
    delta = _delta([5.0, 2.0, 0.5])
    got = restrain(delta, {NAME: 1.0}, "clip")
    assert _singular(got.delta)[:3] == pytest.approx([1.0, 1.0, 0.5], abs=1e-5)
    assert got.above[NAME] == 2 and got.top[NAME] == pytest.approx(5.0, rel=1e-5) and got.bound[NAME] == 1.0
    assert got.change[NAME] == pytest.approx(math.sqrt((16 + 1) / (25 + 4 + 0.25)), rel=1e-5)


def test_prune_grows_only_logarithmically_past_the_bound_at_a_factor_of_the_norm():
    delta = _delta([5.0, 2.0, 0.5])
    got = restrain(delta, {NAME: 0.5}, "prune", factor=2.0)  # the bound is 1.0
    assert _singular(got.delta)[:3] == pytest.approx([math.log(5.0) + 1.0, math.log(2.0) + 1.0, 0.5], abs=1e-5)


def test_an_update_under_the_bound_comes_back_unchanged():
    delta = _delta([0.9, 0.3])
    for rule in ("clip", "prune"):
        got = restrain(delta, {NAME: 1.0}, rule)
        assert got.above[NAME] == 0 and got.change[NAME] == 0.0
        assert torch.allclose(got.delta.factors[NAME].full(), delta.factors[NAME].full(), atol=1e-6)


def test_bad_rules_factors_and_missing_norms_are_refused():
    delta = _delta([1.0])
    with pytest.raises(InvalidInputError, match="Unknown restraint"):
        restrain(delta, {NAME: 1.0}, "squash")
    with pytest.raises(InvalidInputError, match="positive"):
        restrain(delta, {NAME: 1.0}, "clip", factor=0.0)
    with pytest.raises(InvalidInputError, match="spectral norm"):
        restrain(delta, {}, "clip")
