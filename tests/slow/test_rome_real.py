"""ROME and the repository on the real embedded model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from cathrepo.delta import applied, save_delta
from cathrepo.edits.base import EditEnv, get_method
from cathrepo.facts.schema import EditRequest, parse_records
from cathrepo.lm.scoring import prefers
from cathrepo.models import weights_sha256
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def facts():
    return parse_records(json.loads((DATA / "counterfact-sample.json").read_text())[:3])


def test_rome_edits_three_facts_and_leaves_model_unchanged(smollm2, facts):
    model, tok, path = smollm2
    before = snapshot(model)
    method = get_method("rome")(get_method("rome").params_for(model))
    env = EditEnv(base_hash=weights_sha256(path))
    for fact in facts:
        result = method.compute(model, tok, [fact], env)
        with applied(model, result.delta):
            (new, old), (pnew, pold) = prefers(model, tok, [fact.prompt, fact.paraphrases[0]],
                                               [fact.target_new] * 2, [fact.target_true] * 2)
        assert new > old, fact.prompt
        # the value optimisation reached its stop (every row of the prompt gives the target p >= v_stop_prob),
        # not the end of its step budget
        info = result.info["facts"][0]
        assert info["stopped"]
    assert not changed_weights(model, before)


def test_peft_reload_reproduces_real_edit(smollm2, facts, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok, path = smollm2
    method = get_method("rome")(get_method("rome").params_for(model))
    result = method.compute(model, tok, [facts[0]], EditEnv(base_hash=weights_sha256(path)))
    save_delta(result.delta, tmp_path / "delta")
    ids = tok(facts[0].prompt, return_tensors="pt")["input_ids"]
    with applied(model, result.delta), torch.no_grad():
        merged = model(ids).logits
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "delta"))
    with torch.no_grad():
        via_peft = peft_model.eval()(input_ids=ids).logits
    assert torch.allclose(merged, via_peft, atol=1e-3)
    assert merged[0, -1].argmax() == via_peft[0, -1].argmax()


def test_repository_on_the_embedded_model(tmp_path, facts):
    """init on the embedded model, one gated edit, generate, revert to a bit-identical model, verify."""
    from cathrepo.repo import Repo

    repo = Repo.init(tmp_path / "repo", author="slow@example.com")
    base = snapshot(repo.materialize().model)
    fact = facts[0]
    (outcome,) = repo.edit([EditRequest(fact, source=f"counterfact:{fact.case_id}")])
    assert outcome.report.passed
    text = repo.generate(fact.prompt, max_new_tokens=6).text
    assert fact.target_new.lower() in text.lower()
    repo.revert(outcome.edit_id)
    assert not changed_weights(repo.materialize().model, base)
    assert repo.verify().ok
    assert subprocess.run(["git", "verify-commit", "HEAD"], cwd=repo.root).returncode == 0
