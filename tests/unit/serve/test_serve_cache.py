"""The server's model cache: one copy per selection with its deltas added once, the base never changed,
least recently used copies dropped, and a held model's lock making others wait until their deadline."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from cathrepo.delta import Delta, LowRank
from cathrepo.serve.cache import ModelCache, ServeTimeoutError
from tests.helpers import changed_weights, snapshot


def _delta(seed: int) -> Delta:
    gen = torch.Generator().manual_seed(seed)
    return Delta({"0": LowRank(B=torch.randn(3, 1, generator=gen), A=torch.randn(1, 4, generator=gen))})


@pytest.fixture
def base():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False))


def test_each_selection_gets_its_own_copy_and_the_base_never_changes(base):
    before = snapshot(base)
    cache = ModelCache(base, capacity=2)
    far = time.monotonic() + 30
    with cache.holding(("c1", ()), [], far) as model:
        assert model is base
    d1, d2 = _delta(1), _delta(2)
    with cache.holding(("c1", ("e1",)), [d1], far) as one:
        first = one
        assert torch.allclose(one[0].weight, before["0.weight"] + d1.factors["0"].full())
    with cache.holding(("c1", ("e1",)), [d1], far) as again:
        assert again is first and cache.builds == 1
    with cache.holding(("c2", ("e1", "e2")), [d1, d2], far) as two:
        expected = before["0.weight"] + d1.factors["0"].full() + d2.factors["0"].full()
        assert torch.allclose(two[0].weight, expected, atol=1e-6)
    assert not changed_weights(base, before)
    with cache.holding(("c3", ("e2",)), [d2], far):
        pass
    assert cache.keys() == [("c2", ("e1", "e2")), ("c3", ("e2",))]  # c1 was least recently used
    with cache.holding(("c1", ("e1",)), [d1], far) as rebuilt:
        assert rebuilt is not first and cache.builds == 4


def test_a_held_model_makes_others_wait_until_their_deadline(base):
    cache = ModelCache(base, capacity=1)
    key, deltas = ("c1", ("e1",)), [_delta(1)]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with cache.holding(key, deltas, time.monotonic() + 30):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(30)
    try:
        with pytest.raises(ServeTimeoutError, match="waiting for its model"):
            with cache.holding(key, deltas, time.monotonic() + 0.2):
                pass
        with cache.holding(("c2", ("e2",)), [_delta(2)], time.monotonic() + 5):
            pass  # another model is not blocked
    finally:
        release.set()
        thread.join()
    with cache.holding(key, deltas, time.monotonic() + 5):
        pass
