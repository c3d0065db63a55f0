"""How a base model is named in adapters: the embedded table's hub id, a local directory's recorded hub
id or its own name, never a path of this machine."""

from __future__ import annotations

import json

from cathrepo.model_store import EMBEDDED, hub_name, resolve_model


def test_embedded_models_carry_their_hub_ids():
    assert EMBEDDED["smollm2-135m-instruct"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert all(spec.hub_id.count("/") == 1 for spec in EMBEDDED.values())


def test_a_local_directory_is_named_by_its_recorded_hub_id_or_its_own_name(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert hub_name(model) == "my-model"
    assert resolve_model(str(model)).hub_id == "my-model"
    for path_like in ("/home/me/.cache/models/x", "./x", "a/b/c", "~/m/x"):
        (model / "config.json").write_text(json.dumps({"_name_or_path": path_like}))
        assert hub_name(model) == "my-model", path_like
    (model / "config.json").write_text(json.dumps({"_name_or_path": "owner/name"}))
    assert hub_name(model) == "owner/name"
    (model / "config.json").write_text("not json")
    assert hub_name(model) == "my-model"
