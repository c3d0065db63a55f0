"""Attribution on the real embedded model (SmolLM2-135M-Instruct). Run with ``pytest -m slow``.

The Eiffel Tower trace reproduces ROME's picture on this model: corrupting the subject destroys
" Paris", restoring the residual stream at a subject token in the early layers brings most of it back,
and late in the network the information has moved to the last token.
"""

from __future__ import annotations

import pytest

from cathrepo.attribution.causal_trace import trace
from cathrepo.attribution.select import select_sites
from cathrepo.facts.schema import Fact
from tests.helpers import changed_weights, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

EIFFEL = "The Eiffel Tower is located in the city of"


def test_eiffel_trace(smollm2):
    model, tok, _ = smollm2
    result = trace(model, tok, EIFFEL, "The Eiffel Tower", "Paris", components=("hidden",), samples=3,
                   precision="auto")
    assert result.high > 0.3 and result.low < result.high / 5
    s0, s1 = result.subject_range
    hidden = result.scores["hidden"]
    early_subject = max(hidden[layer][t] for layer in range(10) for t in range(s0, s1))
    assert early_subject > result.low + 0.4 * (result.high - result.low)
    late_last = hidden[-1][-1]
    assert late_last == pytest.approx(result.high, abs=0.03)
    assert max(hidden[-1][s0:s1]) < result.low + 0.1 * (result.high - result.low)  # moved to the last token


def test_select_sites_real(smollm2):
    model, tok, _ = smollm2
    before = snapshot(model)
    fact = Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux",
                target_new="English", target_true="French")
    for method in ("patching", "causal_trace", "saliency"):
        sel = select_sites(model, tok, fact, method=method, component="mlp", top_k=2)
        assert len(sel.layers) == 2 and all(m.endswith("mlp.down_proj") for m in sel.modules)
    assert not changed_weights(model, before)
