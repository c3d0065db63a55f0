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


def test_a_conversion_finished_by_another_process_meanwhile_is_kept(tmp_path, monkeypatch, tiny_llama):
    """Two commands on a fresh machine both convert the embedded model; the one that ends second must not
    delete the directory the first is already loading from."""
    import dataclasses

    import transformers

    from cathrepo import model_store as store

    model, tok, _ = tiny_llama
    monkeypatch.setenv("CATHREPO_CACHE_DIR", str(tmp_path / "cache"))
    spec = dataclasses.replace(EMBEDDED["smollm2-135m-instruct"], key="tiny-race")
    target = store.cache_dir() / "models" / spec.key
    monkeypatch.setattr(type(spec), "gguf_path", lambda self: (tmp_path, "x.gguf"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)

    def other_process_finishes_first(*args, **kwargs):
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_text("the other process's weights")
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", other_process_finishes_first)
    assert store._converted_embedded(spec) == target
    assert (target / "model.safetensors").read_text() == "the other process's weights"
    assert [p.name for p in target.parent.iterdir()] == ["tiny-race"]  # no staging left behind
