"""``explain`` and tenants on the real embedded model (SmolLM2-135M-Instruct): the edit that changed an
answer is named as its cause and is the only one measured, an unrelated prompt keeps the base model's
answer with no cause, and a tenant without the edit keeps the base model's answer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cathrepo.config import TenantConfig, dump_config, load_config
from cathrepo.facts.schema import EditRequest, Fact, parse_records
from cathrepo.repo import Repo, layout

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent.parent / "data"
EIFFEL = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome",
              target_true="Paris")
UNRELATED = "The capital of Japan is the city of"


def _configure(repo: Repo, tenants: dict[str, TenantConfig]) -> None:
    """Only the efficacy gate (the test is about explain, not the gates: under two minutes) and tenants."""
    config = load_config(repo.root / layout.CONFIG)
    gates = {**config.gates, "stages": {**config.gates.get("stages", {}), "edit": ["efficacy"]}}
    (repo.root / layout.CONFIG).write_text(dump_config(dataclasses.replace(config, gates=gates, tenants=tenants)))
    repo.git.add([layout.CONFIG])
    repo.git.commit("Efficacy gate only; tenants")


def test_explain_names_the_cause_on_the_real_model(tmp_path):
    records = parse_records(json.loads((DATA / "counterfact-sample.json").read_text())[:1])
    repo = Repo.init(tmp_path / "repo", author="slow@example.com")
    ids = [repo.edit([EditRequest(f, source="counterfact", author="slow")])[0].edit_id for f in records[:1]]
    (eiffel,) = [o.edit_id for o in repo.edit([EditRequest(EIFFEL, source="test://eiffel", risk="low")])]
    ids.append(eiffel)
    _configure(repo, {"no-eiffel": TenantConfig(exclude=[f"edit:{eiffel}"])})

    out = repo.explain(EIFFEL.prompt, max_new_tokens=4)
    assert "Rome" in out.answer and "Rome" not in out.base_answer
    assert out.cause == [eiffel]
    by_id = {e.id: e for e in out.edits}
    assert list(by_id) == ids and by_id[eiffel].status == "measured" and by_id[eiffel].delta_logprob < -2
    assert "Rome" not in (by_id[eiffel].answer_without or "")
    assert by_id[eiffel].provenance["source"] == "test://eiffel" and by_id[eiffel].provenance["risk"] == "low"
    others = [e for e in out.edits if e.id != eiffel]
    assert all(e.status == "screened" for e in others), [e.screen for e in others]  # about other subjects

    everything = repo.explain(EIFFEL.prompt, max_new_tokens=4, screen=False)
    assert everything.cause == [eiffel] and all(abs(e.delta_logprob) < 0.5 for e in everything.edits
                                                if e.id != eiffel)  # the screened ones barely matter

    unrelated = repo.explain(UNRELATED, max_new_tokens=4, screen=False)
    assert unrelated.answer == unrelated.base_answer and unrelated.cause == []

    tenant = repo.explain(EIFFEL.prompt, tenant="no-eiffel", max_new_tokens=4)
    assert eiffel not in [e.id for e in tenant.edits] and "Rome" not in tenant.answer
    assert tenant.answer == tenant.base_answer and tenant.cause == []
