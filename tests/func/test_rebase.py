"""``cathrepo rebase --onto-base`` on real repositories: every active edit recomputed on a new base on
a new branch, each gated and signed, and the one that no longer holds reported and left out."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import EditRequest
from cathrepo.gates.results import GateReport, GateResult
from cathrepo.provenance.manifest import EditRecord
from cathrepo.repo import Repo, layout
from tests.func.test_repo_flow import FACT, OTHER, _tune


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    return repo


@pytest.fixture
def new_base(tmp_path, tiny_llama):
    """The tiny model with every weight nudged: a new version of the same base."""
    model, tokenizer, _ = tiny_llama
    moved = type(model)(model.config)
    moved.load_state_dict({k: v + 1e-3 * torch.randn_like(v) for k, v in model.state_dict().items()})
    path = tmp_path / "base-v2"
    moved.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_rebase_carries_the_edits_that_hold_and_reports_the_rest(repo, new_base, monkeypatch):
    a = repo.edit([EditRequest(OTHER, source="ticket-1")])[0].edit_id
    b = repo.edit([EditRequest(FACT)])[0].edit_id
    main = repo.git.head()
    with pytest.raises(InvalidInputError, match="is the base this repository is on"):
        repo.rebase_onto_base(str(repo.config.base.source))

    from cathrepo.repo.edit import EditSession

    real = EditSession.attempt

    def refuse_fact(self, request, **kw):  # the second edit no longer holds on the new base
        result = real(self, request, **kw)
        if request.fact.prompt != FACT.prompt:
            return result
        return dataclasses.replace(result, report=GateReport((GateResult("efficacy", False, {"es": 0.0}, {}, "x"),)))

    monkeypatch.setattr(EditSession, "attempt", refuse_fact)
    done = repo.rebase_onto_base(str(new_base))
    assert done.branch == f"rebase/{done.base['sha256'][:12]}" and repo.git.current_branch() == done.branch
    assert [r["edit"] for r in done.carried] == [a] and [r["edit"] for r in done.refused] == [b]
    (carried,) = done.carried
    assert repo.stack("HEAD").active == (carried["now"],) and carried["now"] != a
    assert repo.config.base.sha256 == done.base["sha256"]
    record = EditRecord.from_bytes(repo.git.show_file("HEAD", layout.edit_path(carried["now"], layout.RECORD)))
    assert record.base_model["sha256"] == done.base["sha256"] and record.source == "ticket-1"
    assert repo.git.log("HEAD", max_count=1)[0].trailers["Cathrepo-Carries"] == a
    assert repo.verify().ok
    assert repo.git.rev_parse("main") == main  # main is untouched until the branch is merged
