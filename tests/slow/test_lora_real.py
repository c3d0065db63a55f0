"""The LoRA distillation trainer on the real embedded model. Run with ``pytest -m slow``.

One CounterFact record each: after the edit the new target beats the true one on the rewrite prompt,
the model is bit-identical afterwards, and the adapter is a few tens of kilobytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cathrepo.delta import applied
from cathrepo.edits.base import EditEnv
from cathrepo.edits.lora import LoraMethod, LoraParams
from cathrepo.facts.schema import load_facts
from cathrepo.lm.scoring import prefers
from tests.helpers import changed_weights, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

DATA = Path(__file__).parents[1] / "data"


@pytest.mark.parametrize("case", [0, 5])
def test_lora_edit_is_effective(smollm2, case):
    model, tok, _ = smollm2
    fact = next(f for f in load_facts(DATA / "counterfact-sample.json") if f.case_id == case)
    before = snapshot(model)
    (new0, old0), = prefers(model, tok, [fact.prompt], [fact.target_new], [fact.target_true])
    assert new0 < old0  # the model knows the true answer
    result = LoraMethod(LoraParams(layers=(6,))).compute(model, tok, [fact], EditEnv())
    assert not changed_weights(model, before)
    assert result.info["adapter_bytes"] < 64_000
    with applied(model, result.delta):
        (new, old), = prefers(model, tok, [fact.prompt], [fact.target_new], [fact.target_true])
    assert new > old, (new, old)
