"""Export on a real repository (tiny Llama standing in for the embedded model): a PEFT adapter and a
merged model that reproduce the materialized model, rank compaction with its error, refusals, no
half-written output, and adapters that name the base by its hub id while old edits keep their bytes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo, layout
from cathrepo.repo.export import MANIFEST, export
from tests.func.test_repo_flow import FACT, OTHER, _tune

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = "The capital of Italy is"


@pytest.fixture
def base_dir(tiny_llama, monkeypatch):
    """The tiny Llama served as the embedded default model's converted copy."""
    import cathrepo.model_store as store

    _, _, model_dir = tiny_llama
    monkeypatch.setattr(store, "_converted_embedded", lambda spec: model_dir)
    return model_dir


@pytest.fixture
def repo(tmp_path, base_dir, corpus):
    repo = Repo.init(tmp_path / "edits", base="embedded:smollm2-135m-instruct")
    _tune(repo, corpus)
    for fact in (FACT, OTHER):
        repo.edit([EditRequest(fact)])
    return repo


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def _expected(repo: Repo, rev: str = "HEAD") -> torch.Tensor:
    state = repo.materialize(rev)
    return _logits(state.model, state.tokenizer)


def test_new_edits_name_the_embedded_base_by_its_hub_id(repo):
    for edit_id in repo.stack().active:
        config = json.loads(repo.git.show_file("HEAD", layout.edit_path(edit_id, layout.ADAPTER_CONFIG)))
        assert config["base_model_name_or_path"] == HUB_ID
        base = repo.record(edit_id).base_model
        assert base["hub_id"] == HUB_ID and base["sha256"] == repo.config.base.sha256
    assert repo.verify().ok


def test_peft_export_reproduces_the_materialized_model(repo, base_dir, tmp_path):
    from peft import PeftModel

    from cathrepo.lm.decoding import greedy_continuations
    from cathrepo.models import load_model

    done = export(repo, tmp_path / "adapter")
    config = json.loads((done.out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID and done.strategy == "cat" and done.max_error == 0.0
    assert config["r"] == done.rank == 2  # two rank-one ROME edits of one module: ranks add
    manifest = json.loads((done.out / MANIFEST).read_text())
    assert manifest["edits"] == list(repo.stack().active) and manifest["commit"] == repo.git.head()
    assert manifest["base_model"] == {"name": repo.config.base.name, "hub_id": HUB_ID,
                                      "sha256": repo.config.base.sha256}
    base, tokenizer = load_model(base_dir, device="cpu")
    peft_model = PeftModel.from_pretrained(base, str(done.out))  # the local base object, no hub lookup
    assert torch.allclose(_logits(peft_model, tokenizer), _expected(repo), atol=1e-5, rtol=0)
    merged = peft_model.merge_and_unload()
    answer = greedy_continuations(merged, tokenizer, [PROMPT], max_new_tokens=8)[0]
    assert answer == repo.generate(PROMPT, max_new_tokens=8).text


def test_merged_export_reproduces_the_materialized_model(repo, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = export(repo, tmp_path / "merged", fmt="merged")
    model = AutoModelForCausalLM.from_pretrained(str(done.out))
    tokenizer = AutoTokenizer.from_pretrained(str(done.out))
    assert torch.allclose(_logits(model, tokenizer), _expected(repo), atol=1e-5, rtol=0)
    assert json.loads((done.out / MANIFEST).read_text())["strategy"] == "merged"


def test_rank_limit_writes_that_rank_and_reports_its_error(repo, tmp_path):
    done = export(repo, tmp_path / "r1", rank=1)
    config = json.loads((done.out / "adapter_config.json").read_text())
    assert config["r"] == 1 and done.rank == 1 and done.strategy == "svd:1"
    assert 0.0 < done.max_error < 1.0
    assert json.loads((done.out / MANIFEST).read_text())["max_error"] == pytest.approx(done.max_error)


def test_a_revision_with_no_active_edit(repo, base_dir, tmp_path):
    """No adapter changes nothing, so peft refuses; merged writes the base model itself."""
    from transformers import AutoModelForCausalLM

    from cathrepo.models import load_model

    with pytest.raises(InvalidInputError, match="no active edit"):
        export(repo, tmp_path / "none", rev="HEAD~2")
    assert not (tmp_path / "none").exists()
    done = export(repo, tmp_path / "base", fmt="merged", rev="HEAD~2")
    base, tokenizer = load_model(base_dir, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(str(done.out))
    assert done.edits == () and torch.equal(_logits(model, tokenizer), _logits(base, tokenizer))


def test_existing_output_is_refused_unless_forced(repo, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="already exists"):
        export(repo, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(InvalidInputError, match="--rank"):
        export(repo, tmp_path / "m", fmt="merged", rank=4)
    export(repo, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failure_midway_leaves_no_output(repo, tmp_path, monkeypatch):
    import cathrepo.delta

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cathrepo.delta, "save_delta", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export(repo, tmp_path / "out" / "adapter")
    assert list((tmp_path / "out").iterdir()) == []


def test_an_old_edit_naming_a_local_path_keeps_its_bytes_and_exports(tmp_path, base_dir, corpus, monkeypatch):
    """Edits committed before adapters named the hub id name this machine's path; nothing rewrites
    them, they verify, and they export and consolidate together with new edits."""
    import cathrepo.models

    repo = Repo.init(tmp_path / "edits", base="embedded:smollm2-135m-instruct")
    _tune(repo, corpus)
    real = cathrepo.models.resolve_model
    with monkeypatch.context() as patch:  # the old behaviour: the model's local path
        patch.setattr(cathrepo.models, "resolve_model",
                      lambda source: dataclasses.replace(real(source), hub_id=str(base_dir)))
        old = repo.edit([EditRequest(OTHER)])[0].edit_id
    path = layout.edit_path(old, layout.ADAPTER_CONFIG)
    before = repo.git.show_file("HEAD", path)
    assert json.loads(before)["base_model_name_or_path"] == str(base_dir)
    repo.edit([EditRequest(FACT)])
    done = export(repo, tmp_path / "adapter")
    assert json.loads((done.out / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    assert torch.allclose(_logits(*_peft(base_dir, done.out)), _expected(repo), atol=1e-5, rtol=0)
    repo.consolidate(strategy="cat", gate=False)
    assert repo.git.show_file("HEAD", path) == before and (repo.root / path).read_bytes() == before
    assert repo.verify().ok


def _peft(base_dir, adapter):
    from peft import PeftModel

    from cathrepo.models import load_model

    base, tokenizer = load_model(base_dir, device="cpu")
    return PeftModel.from_pretrained(base, str(adapter)), tokenizer
