"""Site selection (modules from the family templates, bit-identical model) and the heatmap files."""

from __future__ import annotations

import json

import pytest

from cathrepo.attribution import ScoreMap
from cathrepo.attribution.plots import plot_trace, write_results
from cathrepo.attribution.select import run_methods, select_sites
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.models import family_for
from tests.helpers import changed_weights, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

FACT = Fact(prompt="I know that the Eiffel Tower is located in", subject="the Eiffel Tower",
            target_new="Rome", target_true="Paris")


@pytest.mark.parametrize("method", ["patching", "causal_trace", "saliency"])
def test_select_sites(tiny_model, method):
    model, tok, _ = tiny_model
    before = snapshot(model)
    sel = select_sites(model, tok, FACT, method=method, component="mlp", top_k=2)
    family = family_for(model)
    assert len(sel.layers) == 2 and len(set(sel.layers)) == 2
    assert sel.modules == [family.layer_name("mlp_out", layer) for layer in sel.layers]
    ranked = sel.scores["mlp"]
    assert min(ranked[layer] for layer in sel.layers) >= max(
        v for i, v in enumerate(ranked) if i not in sel.layers
    )
    summary = sel.summary()
    assert json.loads(json.dumps(summary))["layers"] == sel.layers and summary["method"] == method
    assert not changed_weights(model, before)


def test_select_attn_restricted_and_several_facts(tiny_llama):
    model, tok, _ = tiny_llama
    other = Fact(prompt="Toko Yasuda plays the", subject="Toko Yasuda", target_new="guitar")
    sel = select_sites(model, tok, [FACT, other], method="saliency", component="attn", layers=[1, 3])
    assert sel.layers[0] in (1, 3) and sel.modules[0].endswith("self_attn.o_proj")
    assert sel.details["facts"] == 2


def test_select_refuses_bad_arguments(tiny_llama):
    model, tok, _ = tiny_llama
    with pytest.raises(InvalidInputError):
        select_sites(model, tok, FACT, method="rome")
    with pytest.raises(InvalidInputError):
        select_sites(model, tok, FACT, component="ffn")
    with pytest.raises(InvalidInputError):
        select_sites(model, tok, FACT, top_k=99)


def test_plots_and_scores_json(tiny_llama, tmp_path):
    model, tok, _ = tiny_llama
    results = run_methods(model, tok, FACT.prompt, FACT.subject, "Paris",
                          methods=["causal_trace", "patching", "saliency"], components=["mlp"], samples=1)
    paths = write_results(results, tmp_path)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 3 * 2  # per component + combined, per method
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    data = json.loads((tmp_path / "scores.json").read_text())
    back = ScoreMap.from_json(data["patching"])
    flat = [v for row in back.scores["mlp"] for v in row]
    assert flat == pytest.approx([v for row in results["patching"].scores["mlp"] for v in row], abs=1e-6)
    only = plot_trace(results["saliency"], tmp_path / "x", prefix="eiffel")
    assert [p.name for p in only] == ["eiffel-mlp.png", "eiffel.png"]


def test_patching_needs_a_target(tiny_llama):
    model, tok, _ = tiny_llama
    with pytest.raises(InvalidInputError, match="target"):
        run_methods(model, tok, FACT.prompt, FACT.subject, None, methods=["patching"])
