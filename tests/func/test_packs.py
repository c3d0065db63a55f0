"""Packs on real repositories (tiny model): consolidation gated and exact for ``cat``, a revert inside a
pack refolding it so the model equals the one built from the remaining edits, verify catching a
tampered pack, merge --strategy folding the union, and a clip pack holding the stack at the bound."""

from __future__ import annotations

import pytest
import torch

from cathrepo.exceptions import GateFailedError
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo, layout
from tests.func.test_ci import THIRD, _clean, _merge_gates
from tests.func.test_repo_flow import FACT, OTHER, _tune


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    _merge_gates(repo, ["regression"])
    for fact in (OTHER, FACT, THIRD):
        repo.edit([EditRequest(fact)])
    return repo


def _weights(repo: Repo, rev: str = "HEAD") -> dict[str, torch.Tensor]:
    state = repo.materialize(rev)
    return {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_cat_pack_stands_in_for_the_edits_exactly(repo):
    active = repo.stack("HEAD").active
    before = _weights(repo)
    done = repo.consolidate(strategy="cat")
    assert done.report is not None and done.report.passed
    assert done.pack.record.edits == active and done.pack.record.strategy == "cat"
    assert done.pack.record.gates["passed"] is True and done.pack.record.gates["stage"] == "merge"
    stack = repo.stack("HEAD")
    assert stack.active == active and stack.packs == (done.pack.id,)
    assert _close(before, _weights(repo))
    files = repo.git.list_files("HEAD", layout.PACKS)
    assert layout.pack_path(done.pack.id, layout.WEIGHTS_POINTER) in files
    assert layout.pack_path(done.pack.id, layout.WEIGHTS) not in files  # the weights live in DVC
    assert repo.verify().ok and _clean(repo)
    assert repo.git.log("HEAD", max_count=1)[0].trailers["Cathrepo-Strategy"] == "cat"


def test_revert_inside_a_pack_refolds_it_from_the_remaining_edits(repo):
    a, b, c = repo.stack("HEAD").active
    repo.revert(b)
    without_b = _weights(repo)
    repo.git.run(["reset", "-q", "--hard", "HEAD~1"])
    repo.consolidate(strategy="cat")
    repo.revert(b)
    stack = repo.stack("HEAD")
    assert stack.active == (a, c) and len(stack.packs) == 1
    (pack,) = stack.packs
    assert repo.record(a) and pack != repo.git.log("HEAD~1", max_count=1)[0].trailers["Cathrepo-Pack"]
    assert _close(without_b, _weights(repo))
    assert repo.verify().ok
    repo.revert(a)  # one edit left: the pack is dropped and c applies by itself
    assert repo.stack("HEAD").packs == () and repo.stack("HEAD").active == (c,)


def test_a_pack_that_fails_its_gates_is_not_used(repo, monkeypatch):
    import cathrepo.repo.packs as packs
    from cathrepo.gates.results import GateReport, GateResult

    head = repo.git.head()
    failing = GateReport((GateResult("regression", False, {"broken": 1.0}, {}, "forced"),), "merge")
    monkeypatch.setattr(packs, "gate_fold", lambda *a, **k: failing)
    with pytest.raises(GateFailedError, match="the edits stay as they are|pack of 3 edits"):
        repo.consolidate(strategy="svd:1")
    assert repo.git.head() == head and repo.stack("HEAD").packs == () and _clean(repo)
    assert not (repo.root / layout.PACKS).exists() or not any((repo.root / layout.PACKS).iterdir())


def test_svd_pack_records_its_error_and_a_tampered_pack_fails_verify(repo):
    done = repo.consolidate(strategy="svd:1", force=True)
    assert done.pack.record.strategy == "svd:1" and max(done.pack.record.ranks.values()) == 1
    assert done.pack.record.max_error >= 0.0
    path = repo.root / layout.pack_path(done.pack.id, layout.PACK)
    path.write_text(path.read_text().replace('"svd:1"', '"cat"'))
    repo.git.add([layout.pack_path(done.pack.id, layout.PACK)])
    repo.git.commit("Tamper with the pack record", sign_with=repo.signing_key())
    report = repo.verify()
    assert not report.ok and any(layout.pack_path(done.pack.id) in i.path for i in report.issues)


def test_merge_with_a_strategy_folds_the_union(repo):
    repo.checkout("more", create=True)
    a, b, c = repo.stack("HEAD").active
    repo.revert(c)
    repo.checkout("main")
    done = repo.merge("more", strategy="cat")
    assert done.active == (a, b) and "pack" in done.extra
    assert repo.stack("HEAD").packs == (done.extra["pack"],)
    assert repo.verify().ok


def test_clip_pack_holds_the_stack_at_the_base_norm_and_refolds_on_revert(repo):
    from cathrepo.merging.restrain import spectral_norm
    from cathrepo.repo.packs import load_packs

    a, b, c = repo.stack("HEAD").active
    base = {k: v.detach().clone() for k, v in repo.load_base()[0].state_dict().items()}
    done = repo.consolidate(strategy="clip:0.01", force=True)  # a bound low enough to bite on the tiny model
    assert done.pack.record.strategy == "clip:0.01" and done.pack.record.max_error > 0
    after = _weights(repo)
    for module in done.pack.delta.modules:
        key = f"{module}.weight"
        top = float(torch.linalg.matrix_norm((after[key] - base[key]).double(), 2))
        assert top == pytest.approx(0.01 * spectral_norm(base[key]), rel=1e-3)  # held at the bound
    assert repo.verify().ok
    repo.revert(b)  # folded again by the same strategy from the edits that remain
    (pack,) = load_packs(repo, "HEAD")
    record = repo.git.log("HEAD", max_count=1)[0]
    assert repo.stack("HEAD").active == (a, c) and pack.id != done.pack.id
    assert pack.record.edits == (a, c) and pack.record.strategy == "clip:0.01"
    refolded = _weights(repo)
    for module in done.pack.delta.modules:
        key = f"{module}.weight"
        assert float(torch.linalg.matrix_norm((refolded[key] - base[key]).double(), 2)) <= \
            0.01 * spectral_norm(base[key]) * (1 + 1e-3)
    assert record.trailers.get("Cathrepo-Action") == "revert" and repo.verify().ok
