"""Replaying the layers below a change gives the scores a full forward gives, and only where it may."""

from __future__ import annotations

import pytest

import cathrepo.lm.replay as replay
from tests.unit.lm.test_scoring import PAIRS, PROMPTS


def _delta(model, module, seed=3):
    import torch

    from cathrepo.delta import Delta, LowRank

    gen = torch.Generator().manual_seed(seed)
    layer = model.get_submodule(module)
    out, into = (layer.nf, layer.weight.shape[0]) if hasattr(layer, "nf") else tuple(layer.weight.shape)  # Conv1D
    return Delta({module: LowRank(torch.randn(out, 1, generator=gen), torch.randn(1, into, generator=gen))})


def _flat(scores):
    return [(s.top1, s.logprobs, s.top) for s in scores]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_a_change_above_the_replayed_layers_scores_as_a_full_forward(family, request, monkeypatch):
    """Record the lower layers' output in one state, replay it in a state changed above them: every
    score equals the full forward's exactly, and the replay really ran (the store held the batch)."""
    from cathrepo.delta import applied
    from cathrepo.gates.states import lower_for
    from cathrepo.lm.replay import ResidualStore
    from cathrepo.lm.scoring import score_continuations
    from cathrepo.models import family_for

    model, tok, _ = request.getfixturevalue(f"tiny_{family}")
    change = _delta(model, family_for(model).layer_name("mlp_out", 2))
    lower = lower_for(model, "base-hash", change, ())
    assert lower is not None and len(lower.blocks) == 2
    store = ResidualStore()
    monkeypatch.setattr(replay, "STORE", store)
    before = score_continuations(model, tok, PROMPTS, PAIRS, batch_size=2, lower=lower)
    recorded = len(store)
    assert recorded >= 2  # one residual per batch
    with applied(model, change):
        full = score_continuations(model, tok, PROMPTS, PAIRS, batch_size=2)
        replayed = score_continuations(model, tok, PROMPTS, PAIRS, batch_size=2, lower=lower)
    assert len(store) == recorded  # every batch replayed, none recorded anew
    assert _flat(replayed) == _flat(full)
    assert _flat(replayed) != _flat(before)  # the change above the replayed layers shows


def test_what_the_lower_layers_read_decides_the_reuse(tiny_llama):
    """States that differ only above the change share their lower reading; a delta below it, another
    base or an unknown base does not (None: no replay at all)."""
    from cathrepo.gates.base import GateRun
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.gates.states import lower_for

    model, _, _ = tiny_llama
    change = _delta(model, "model.layers.2.mlp.down_proj")
    above = _delta(model, "model.layers.3.mlp.down_proj", seed=4)
    below = _delta(model, "model.layers.0.mlp.down_proj", seed=5)
    base = lower_for(model, "h", change, ())
    assert base is not None and base.blocks == ("model.layers.0", "model.layers.1")
    assert lower_for(model, "h", change, (above, change)) == base
    assert lower_for(model, "h", change, (below,)).reads != base.reads
    assert lower_for(model, "other", change, ()).reads != base.reads
    assert lower_for(model, "h", _delta(model, "model.layers.0.mlp.down_proj"), ()).blocks == ()
    ctx = GateRun(model, None, (), (change,), None, (), GatePolicy(), "edit")
    assert ctx.lower("after") is None  # base_hash "unknown": nothing to key a reuse on
    ctx = GateRun(model, None, (below,), (below, change), None, (), GatePolicy(), "edit", base_hash="h")
    assert ctx.lower("before") == ctx.lower("after") != ctx.lower("base")


def test_the_store_forgets_the_least_recently_used_first():
    import torch

    from cathrepo.lm.replay import ResidualStore

    store = ResidualStore(max_bytes=3 * 400)
    for i in range(3):
        store.put(("r", str(i)), torch.zeros(100))  # 400 bytes each
    assert store.get(("r", "0")) is not None  # now the most recently used
    store.put(("r", "3"), torch.zeros(100))
    assert store.get(("r", "1")) is None and store.get(("r", "0")) is not None and len(store) == 3
    store.put(("r", "big"), torch.zeros(1000))  # larger than the whole store: not kept
    assert store.get(("r", "big")) is None


def test_a_residual_recorded_under_one_layer_is_not_replayed_under_another(tiny_llama, monkeypatch):
    """A retry at a lower layer reads the same weights below it as the first attempt did, but its
    residual lies at another layer: it records its own instead of replaying the first attempt's."""
    from cathrepo.delta import applied
    from cathrepo.gates.states import lower_for
    from cathrepo.lm.replay import ResidualStore
    from cathrepo.lm.scoring import score_continuations

    model, tok, _ = tiny_llama
    at2 = _delta(model, "model.layers.2.mlp.down_proj")
    at1 = _delta(model, "model.layers.1.mlp.down_proj", seed=6)
    store = ResidualStore()
    monkeypatch.setattr(replay, "STORE", store)
    score_continuations(model, tok, PROMPTS, PAIRS, lower=lower_for(model, "h", at2, ()))
    recorded = len(store)
    with applied(model, at1):
        full = score_continuations(model, tok, PROMPTS, PAIRS)
        retried = score_continuations(model, tok, PROMPTS, PAIRS, lower=lower_for(model, "h", at1, ()))
    assert len(store) == 2 * recorded  # recorded anew at layer 1
    assert _flat(retried) == _flat(full)


def test_a_residual_persisted_by_one_process_is_replayed_by_the_next(tiny_llama, tmp_path, monkeypatch):
    """With a directory, a recorded residual is written there; a process whose memory holds nothing
    (here: an empty store) replays it from disk, and a damaged file is recorded again, not trusted."""
    from cathrepo.delta import applied
    from cathrepo.gates.states import lower_for
    from cathrepo.lm.replay import ResidualStore
    from cathrepo.lm.scoring import score_continuations

    model, tok, _ = tiny_llama
    change = _delta(model, "model.layers.2.mlp.down_proj")
    lower = lower_for(model, "h", change, (), tmp_path / "residuals")
    import torch

    monkeypatch.setattr(replay, "STORE", ResidualStore())
    score_continuations(model, tok, PROMPTS, PAIRS, batch_size=2, lower=lower)
    files = sorted((tmp_path / "residuals").glob("*.pt"))
    assert len(files) == len(replay.STORE) >= 2 and not list((tmp_path / "residuals").glob("*.tmp"))
    with applied(model, change):
        full = score_continuations(model, tok, PROMPTS, PAIRS, batch_size=2)
        monkeypatch.setattr(replay, "STORE", ResidualStore())  # the next process: nothing in memory
        inodes = [f.stat().st_ino for f in files]
        assert _flat(score_continuations(model, tok, PROMPTS, PAIRS, batch_size=2, lower=lower)) == _flat(full)
        assert [f.stat().st_ino for f in files] == inodes  # read, not written again (a write renames a new file in)
        files[0].write_bytes(b"not a tensor")
        monkeypatch.setattr(replay, "STORE", ResidualStore())
        assert _flat(score_continuations(model, tok, PROMPTS, PAIRS, batch_size=2, lower=lower)) == _flat(full)
    assert torch.load(files[0], weights_only=True) is not None  # the damaged batch was recorded again


def test_the_persisted_residuals_stay_under_their_bound_least_recently_used_out(tmp_path, monkeypatch):
    """Past ``DISK_BYTES`` the files written or read longest ago go; one just read stays."""
    import os

    import torch

    directory = tmp_path / "residuals"
    value = torch.zeros(1000)  # about 4 kB on disk
    replay._save(directory, ("a", "1"), value)
    size = replay._file(directory, ("a", "1")).stat().st_size
    monkeypatch.setattr(replay, "DISK_BYTES", 2 * size)
    replay._save(directory, ("b", "2"), value)
    for age, key in ((300, ("a", "1")), (200, ("b", "2"))):  # a written first, b later
        os.utime(replay._file(directory, key), (1e9 - age, 1e9 - age))
    assert replay._load(directory, ("a", "1"), "cpu") is not None  # a is read: now the most recent
    replay._save(directory, ("c", "3"), value)  # a third file: one must go, and it is b
    kept = {p.name for p in directory.glob("*.pt")}
    assert kept == {replay._file(directory, k).name for k in (("a", "1"), ("c", "3"))}
    assert not list(directory.glob("*.tmp"))
