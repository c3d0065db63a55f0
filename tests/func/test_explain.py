"""``explain`` on a real repository (tiny model): the edit that changed an answer is named as its cause
with its provenance, an unchanged answer has no cause, a tenant's explanation lists only its edits, and
the model is left exactly as materialized."""

from __future__ import annotations

import json

import pytest

from cathrepo.config import TenantConfig
from cathrepo.exceptions import InvalidInputError
from cathrepo.repo.explain import explain
from tests.func.test_repo_flow import FACT
from tests.func.test_tenants import set_tenants, three_edits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    return three_edits(tmp_path, tiny_llama, corpus)



def test_explain_names_the_edit_that_changed_the_answer(repo):
    other, fact, third = repo.ids
    out = repo.explain(FACT.prompt, max_new_tokens=1, screen=False)  # later tokens of a random model: noise
    assert out.answer.startswith(FACT.target_new) and not out.base_answer.startswith(FACT.target_new)
    assert out.cause == [fact]
    (effect,) = [e for e in out.edits if e.id == fact]
    assert effect.status == "measured" and effect.changes_answer and effect.delta_logprob < -1.0
    assert effect.answer_without is not None and not effect.answer_without.startswith(FACT.target_new)
    assert effect.summary == f"{FACT.prompt} -> {FACT.target_new}"
    origin = effect.provenance
    assert origin["signature"] == {"status": "verified", "signer": repo.git.config_get("user.email")}
    assert origin["author"] and origin["risk"] and origin["approvals"] == [] and origin["verified_on_load"]
    data = json.loads(json.dumps(out.to_dict()))
    assert data["cause"] == [fact] and [e["id"] for e in data["edits"]] == [other, fact, third]
    assert data["commit"] == repo.git.head() and data["tenant"] is None


def test_removing_a_tenants_only_edit_gives_the_base_models_answer(repo):
    """With one edit, removing it is the base model: its answer without the edit is the base answer, and
    it is the cause exactly when the answer differs from that. (A random tiny model's edits bleed into
    most prompts; tests/slow/test_explain_real.py has an unrelated prompt without cause on a real model.)"""
    set_tenants(repo, {f"only-{i}": TenantConfig(include=[f"edit:{eid}"]) for i, eid in enumerate(repo.ids)})
    for i, eid in enumerate(repo.ids):
        for prompt in (FACT.prompt, "The mother tongue of Danielle Darrieux is"):
            out = repo.explain(prompt, tenant=f"only-{i}", max_new_tokens=1, screen=False)
            (effect,) = out.edits
            assert effect.id == eid and effect.status == "measured"
            assert effect.changes_answer == (out.answer != out.base_answer)
            assert out.cause == ([eid] if effect.changes_answer else [])
            assert effect.answer_without == (out.base_answer if effect.changes_answer else None)


def test_the_screen_keeps_the_edit_about_the_prompt_and_reports_the_rest(repo):
    other, fact, third = repo.ids
    out = explain(repo, FACT.prompt, max_new_tokens=1, threshold=1e9, tolerance=1e9)  # screen all it may
    by_id = {e.id: e for e in out.edits}
    assert by_id[fact].screen["subject_in_prompt"] and by_id[fact].status == "measured"  # "Rome" is in it
    assert out.cause == [fact]
    screened = [e for e in out.edits if e.status == "screened"]
    assert screened and all(e.delta_logprob is None and e.changes_answer is None for e in screened)
    assert out.screened_check["screened"] == len(screened) and "failed" not in out.screened_check
    strict = explain(repo, FACT.prompt, max_new_tokens=1, threshold=1e9, tolerance=0.0)  # the check fails
    assert strict.screened_check.get("failed") or strict.screened_check["delta_logprob"] == 0.0
    if strict.screened_check.get("failed"):
        assert all(e.status == "measured" for e in strict.edits)


def test_a_tenant_explanation_lists_only_its_edits_and_leaves_the_model_as_it_was(repo, monkeypatch):
    import cathrepo.repo.materialize as materialize

    other, fact, third = repo.ids
    set_tenants(repo, {"acme": TenantConfig(include=["tag:acme-v1"])})
    states = []
    real = materialize.materialize

    def keep(*args, **kwargs):
        states.append(real(*args, **kwargs))
        return states[-1]

    monkeypatch.setattr(materialize, "materialize", keep)
    out = repo.explain(FACT.prompt, tenant="acme", max_new_tokens=3)
    assert out.tenant == "acme" and [e.id for e in out.edits] == [other]
    served = {k: v.clone() for k, v in real(repo, tenant="acme").model.state_dict().items()}
    after = states[0].model.state_dict()
    assert all((after[k] == v).all() for k, v in served.items())  # every removal was undone bit for bit


def test_an_empty_prompt_is_refused(repo):
    with pytest.raises(InvalidInputError, match="prompt is empty"):
        repo.explain("  ")
