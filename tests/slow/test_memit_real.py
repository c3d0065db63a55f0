"""MEMIT on the real embedded model (SmolLM2-135M-Instruct): a batch of facts in one multi-layer edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cathrepo.delta import applied, save_delta
from cathrepo.edits.base import EditEnv, get_method
from cathrepo.facts.schema import parse_records
from cathrepo.lm.scoring import prefers
from cathrepo.models import weights_sha256
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent.parent / "data"


def test_memit_writes_a_batch_and_leaves_the_model_unchanged(smollm2, tmp_path):
    model, tok, path = smollm2
    facts = parse_records(json.loads((DATA / "counterfact-sample.json").read_text())[:4])
    before = snapshot(model)
    method = get_method("memit")(get_method("memit").params_for(model))
    result = method.compute(model, tok, facts, EditEnv(base_hash=weights_sha256(path)))
    assert not changed_weights(model, before)
    assert len(result.delta.modules) == len(result.site["layers"]) > 1
    assert all(f.rank == len(facts) for f in result.delta.factors.values())
    prompts = [f.prompt for f in facts]
    with applied(model, result.delta):
        pairs = prefers(model, tok, prompts, [f.target_new for f in facts], [f.target_true for f in facts])
    assert all(new > old for new, old in pairs), pairs
    # the spread delivered most of each target: what is left at the top layer is a fraction of the start
    assert result.info["residual_left"] < 0.5 * result.info["layers"][0]["residual_norm"]
    save_delta(result.delta, tmp_path / "delta")  # several modules, one PEFT adapter
    assert (tmp_path / "delta" / "adapter_model.safetensors").is_file()
