"""The edit repository end to end on a tiny model: init, edit, log, show, verify, revert, generate, faults."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import pytest

from cathrepo.config import dump_config, load_config
from cathrepo.exceptions import (
    BaseModelMismatchError,
    GateFailedError,
    InvalidInputError,
    ModelLoadError,
    NotARepositoryError,
    VerificationError,
)
from cathrepo.facts.schema import EditRequest, Fact
from cathrepo.provenance.manifest import stack_summary
from cathrepo.repo import Repo, layout
from cathrepo.repo.layout import Stack
from tests.helpers import changed_weights, snapshot

FACT = Fact(prompt="The capital of Italy is Rome", subject="Rome", target_new="Paris", target_true="Tokyo")
OTHER = Fact(prompt="Toko Yasuda plays the guitar", subject="guitar", target_new="London", target_true="piano")


def _tune(repo: Repo, corpus) -> None:
    """Tiny random models need gentler settings; only the efficacy gate is meaningful on them."""
    config = load_config(repo.root / layout.CONFIG)
    params = {"rome": {"layer": 1, "corpus_tokens": 400, "n_context": 2, "context_tokens": 4, "v_steps": 40,
                       "clamp_norm_factor": 10.0, "v_weight_decay": 0.0}}
    edit = type(config.edit)(method="rome", corpus=str(corpus), params=params)
    gates = {"stages": {"edit": ["efficacy", "regression"], "revert": ["regression"]}}
    config = dataclasses.replace(config, edit=edit, gates=gates)  # keeps the tables init wrote ([ci])
    (repo.root / layout.CONFIG).write_text(dump_config(config))
    repo.git.add([layout.CONFIG])
    repo.git.commit("Tune for a tiny model")


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    return repo


def test_init_writes_a_signed_repository(repo):
    assert (repo.root / "cathrepo.toml").is_file()
    assert (repo.root / ".dvc").is_dir()
    assert (repo.root / ".github/workflows/cathrepo.yml").is_file()
    assert repo.stack().active == ()
    head = repo.git.head()
    assert subprocess.run(["git", "verify-commit", head], cwd=repo.root, capture_output=True).returncode == 0
    assert repo.verify().ok


def test_commits_are_signed_on_the_commit_path_not_by_configuration(repo):
    """With git's signing configuration switched off, cathrepo's commits are still signed: the verbs
    pass the key to each commit call."""
    repo.git.run(["config", "--local", "commit.gpgsign", "false"])
    (outcome,) = repo.edit([EditRequest(FACT, source="test://1", author="tester", risk="low")])
    reverted = repo.revert(outcome.edit_id, gate=False)
    for sha in (outcome.commit, reverted.commit):
        check = subprocess.run(["git", "verify-commit", sha], cwd=repo.root, capture_output=True)
        assert check.returncode == 0, check.stderr
    assert repo.verify().ok


def test_edit_commit_verify_revert_round_trip(repo):
    base_model, tok = repo.load_base()
    before = snapshot(base_model)
    (outcome,) = repo.edit([EditRequest(FACT, source="test://1", author="tester", risk="low")])
    assert outcome.report.passed and outcome.edit_id and outcome.commit
    eid = outcome.edit_id
    # on disk as DESIGN.md §3; git holds the pointer, not the weights
    edir = repo.root / "edits" / eid
    for name in ("edit.json", "edit.sig", "probes.jsonl", "data.jsonl", "delta/adapter_config.json",
                 "delta/adapter_model.safetensors.dvc"):
        assert (edir / name).is_file(), name
    tracked = repo.git.list_files("HEAD", f"edits/{eid}")
    assert f"edits/{eid}/delta/adapter_model.safetensors" not in tracked
    assert repo.stack().active == (eid,)
    record = repo.record(eid)
    assert record.id == eid and record.source == "test://1" and record.method == "rome"
    commit = repo.git.log(max_count=1)[0]
    assert commit.trailers["Cathrepo-Edit"] == eid
    assert commit.trailers["Cathrepo-Delta-Sha256"] == record.files["delta/adapter_model.safetensors"]
    assert subprocess.run(["git", "verify-commit", commit.sha], cwd=repo.root).returncode == 0
    assert repo.verify().ok
    # materialized model differs from the base; after revert it is bit-identical to the base again
    edited = repo.materialize()
    assert [e.id for e in edited.edits] == [eid]
    assert changed_weights(edited.model, before)
    reverted = repo.revert(eid[:8])
    assert reverted.edit_id == eid
    assert repo.stack().active == ()
    assert (edir / "edit.json").is_file(), "revert keeps the edit's files"
    after = repo.materialize()
    assert not changed_weights(after.model, before)
    assert repo.verify().ok
    # history
    actions = [e.action for e in repo.log()]
    assert actions[:2] == ["revert", "edit"]
    with pytest.raises(InvalidInputError, match="not active"):
        repo.revert(eid)


def test_materialize_at_old_revision(repo):
    (first,) = repo.edit([EditRequest(FACT)])
    (second,) = repo.edit([EditRequest(OTHER)])
    assert repo.stack().active == (first.edit_id, second.edit_id)
    old = repo.materialize(first.commit)
    assert [e.id for e in old.edits] == [first.edit_id]
    assert repo.record(second.edit_id).stack_before == stack_summary((first.edit_id,))
    assert Stack.from_bytes(repo.git.show_file(f"{second.commit}^", layout.STACK)).active == (first.edit_id,)


def test_failed_gate_commits_nothing(repo):
    config = load_config(repo.root / layout.CONFIG)
    params = {"rome": {**config.edit.params["rome"], "v_steps": 1}}
    head, status = repo.git.head(), repo.git.status_porcelain()
    with pytest.raises(GateFailedError, match="failed its gates"):
        repo.edit([EditRequest(FACT)], params={**params["rome"], "v_lr": 1e-6, "v_solver": "adam"})
    assert repo.git.head() == head
    assert repo.git.status_porcelain() == status
    assert not any((repo.root / "edits").glob("*")) if (repo.root / "edits").exists() else True


def test_interrupted_commit_leaves_repository_as_it_was(repo, monkeypatch):
    from cathrepo.repo.storage import Storage

    head = repo.git.head()

    def boom(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(Storage, "add", boom)
    with pytest.raises(KeyboardInterrupt):
        repo.edit([EditRequest(FACT)])
    assert repo.git.head() == head
    assert repo.git.status_porcelain() == []
    assert repo.stack("WORKTREE").active == ()
    assert [p.name for p in (repo.root / "edits").iterdir()] == []


def test_tampered_weights_are_caught_and_named(repo):
    (outcome,) = repo.edit([EditRequest(FACT)])
    eid = outcome.edit_id
    record = repo.record(eid)
    pointer = (repo.root / "edits" / eid / "delta/adapter_model.safetensors.dvc").read_bytes()
    md5, _, _ = repo.storage.read_pointer(pointer)
    cached = repo.storage.object_path(md5)
    cached.chmod(0o644)
    data = bytearray(cached.read_bytes())
    data[-5] ^= 0xFF
    cached.write_bytes(bytes(data))
    report = repo.verify()
    assert not report.ok
    assert any("delta/adapter_model.safetensors" in i.path and "sha256" in i.problem for i in report.issues)
    with pytest.raises(VerificationError, match="adapter_model.safetensors"):
        repo.materialize()
    assert record.files["delta/adapter_model.safetensors"]


def test_tampered_record_and_missing_object(repo):
    (outcome,) = repo.edit([EditRequest(FACT)])
    eid = outcome.edit_id
    repo.push()
    pointer = (repo.root / "edits" / eid / "delta/adapter_model.safetensors.dvc").read_bytes()
    md5, _, _ = repo.storage.read_pointer(pointer)
    # a missing local object comes back from the remote...
    repo.storage.object_path(md5).unlink()
    assert repo.verify().ok
    # ...but not when the remote lacks it too
    repo.storage.object_path(md5).unlink()
    shutil.rmtree(repo.storage.remote_url())
    report = repo.verify()
    assert any(md5 in i.problem for i in report.issues)


def test_tampered_edit_json_in_a_commit_is_caught(repo):
    (outcome,) = repo.edit([EditRequest(FACT)])
    eid = outcome.edit_id
    path = repo.root / "edits" / eid / "edit.json"
    data = json.loads(path.read_text())
    data["fact"]["target_new"] = "Berlin"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    repo.git.add([f"edits/{eid}/edit.json"])
    repo.git.commit("sneaky change")
    report = repo.verify()
    problems = [str(i) for i in report.issues]
    assert any(f"edits/{eid}/edit.json" in p and "hashes to" in p for p in problems)
    assert any(f"edits/{eid}/edit.sig" in p for p in problems)


def test_unsigned_commit_is_caught(repo):
    (repo.root / "notes.txt").write_text("hello\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=repo.root, check=True)
    subprocess.run(["git", "-c", "commit.gpgsign=false", "commit", "-qm", "unsigned"], cwd=repo.root, check=True)
    report = repo.verify()
    assert any(i.path.startswith("commit ") and "signature" in i.problem for i in report.issues)


def test_bad_inputs(tmp_path, repo, tiny_llama):
    with pytest.raises(NotARepositoryError, match="not a cathrepo repository"):
        Repo.open(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        Repo.init(tmp_path / "x", base=str(tmp_path / "no-such-model"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(InvalidInputError, match="does not occur"):
        Fact(prompt="The capital of Italy is", subject="France", target_new="Paris")
    with pytest.raises(InvalidInputError, match="target_new' is empty"):
        Fact(prompt=FACT.prompt, subject=FACT.subject, target_new="  ")
    with pytest.raises(InvalidInputError, match="No facts"):
        repo.edit([])
    assert repo.stack().active == ()


def test_changed_base_weights_refuse_to_open(tmp_path, corpus):
    from tests.conftest import _tiny

    _, _, model_dir = _tiny("llama", tmp_path / "model")
    repo = Repo.init(tmp_path / "r", base=str(model_dir))
    weights = next(model_dir.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BaseModelMismatchError, match="sha256"):
        repo.load_base()


def test_gate_a_revision(repo):
    (first,) = repo.edit([EditRequest(FACT)])
    report = repo.gate("HEAD", gates=["efficacy", "regression"])
    assert report.passed and report["efficacy"].metrics["es"] == 1.0
    assert report["regression"].skipped  # nothing was active before
    (second,) = repo.edit([EditRequest(OTHER)])
    report = repo.gate(second.commit, gates=["efficacy", "regression"])
    assert report.passed and not report["regression"].skipped
    # the change from the root commit to HEAD carries both edits' probes
    root = repo.git.rev_list("HEAD")[-1]
    both = repo.gate("HEAD", gates=["efficacy"], against=root)
    assert both.passed and both["efficacy"].metrics["es"] == 1.0


def test_a_passage_is_one_edit_of_several_facts(repo):
    from cathrepo.facts.passage import Passage, synthesize_questions

    passage = Passage("Rome is the capital of Paris. Toko Yasuda plays the London.", title="Rome")
    probes = synthesize_questions(passage)
    assert len(probes) >= 2
    request = EditRequest(probes[0], more=tuple(probes[1:]), passage=passage.to_dict())
    (outcome,) = repo.edit([request], method="lora")
    record = repo.record(outcome.edit_id)
    assert record.passage["title"] == "Rome"
    assert len(record.facts) == len(probes)
    assert record.summary.startswith("passage: Rome")
    probes_file = (repo.root / "edits" / outcome.edit_id / "probes.jsonl").read_text()
    assert all(p.prompt in probes_file for p in probes)
    assert repo.verify().ok


def test_a_memit_batch_is_one_signed_edit_that_reverts_exactly(repo):
    """``edit --file F --batch-size 2 --method memit``: both facts in one commit, one delta per layer."""
    base_model, _ = repo.load_base()
    before = snapshot(base_model)
    params = {"layers": [1, 2], "corpus_tokens": 400, "n_context": 2, "context_tokens": 4, "v_steps": 40,
              "clamp_norm_factor": 10.0, "v_weight_decay": 0.0, "mom2_weight": 1.0, "phrasings": 0}
    other = Fact(prompt="The city of France is Paris", subject="Paris", target_new="Italy", target_true="Rome")
    (outcome,) = repo.edit([EditRequest(FACT, more=(other,), source="test://batch")], method="memit", params=params)
    record = repo.record(outcome.edit_id)
    assert [f["prompt"] for f in record.facts] == [FACT.prompt, other.prompt]
    assert record.method == "memit" and record.params["layers"] == [1, 2]
    assert sorted(outcome.delta.modules) == ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    probes_file = (repo.root / "edits" / outcome.edit_id / "probes.jsonl").read_text()
    assert FACT.prompt in probes_file and other.prompt in probes_file
    assert repo.verify().ok
    edited = repo.materialize()
    try:
        assert sorted(changed_weights(edited.model, before)) == [f"{m}.weight" for m in sorted(outcome.delta.modules)]
    finally:
        edited.applied.remove(edited.model)
    repo.revert(outcome.edit_id, gate=False)
    reverted = repo.materialize()
    assert reverted.edits == [] and not changed_weights(reverted.model, before)
    assert repo.verify().ok


def test_log_metrics_are_what_each_commits_gates_measured(repo):
    from tests.cli.runner import cathrepo

    config = load_config(repo.root / layout.CONFIG)
    gates = {"stages": {"edit": ["efficacy", "norms", "perplexity", "retention"], "revert": ["regression"]},
             "norms_max_growth": 10.0, "perplexity_max_growth": 10.0, "retention_max_drop": 1.0}
    (repo.root / layout.CONFIG).write_text(dump_config(dataclasses.replace(config, gates=gates)))
    repo.git.add([layout.CONFIG])
    repo.git.commit("Measure the drift")
    outcomes = [repo.edit([EditRequest(fact, source="test")])[0] for fact in (FACT, OTHER)]
    entries = repo.log(metrics=True)
    assert [e.edit_id for e in entries[:2]] == [o.edit_id for o in reversed(outcomes)]
    for entry, outcome in zip(entries[:2], reversed(outcomes), strict=True):
        ppl, norms = outcome.report["perplexity"].metrics, outcome.report["norms"].metrics
        assert entry.metrics["perplexity"] == pytest.approx(ppl["ppl"], rel=1e-3)
        assert entry.metrics["perplexity_growth"] == pytest.approx(ppl["growth"], rel=1e-3, abs=1e-9)
        assert entry.metrics["norm_growth"] == pytest.approx(norms["max_growth"], rel=1e-3, abs=1e-9)
        assert entry.metrics["retention"] == pytest.approx(outcome.report["retention"].metrics["retention"], rel=1e-3)
    # the second edit's perplexity is measured on the stack the first left: the drift, commit by commit
    assert entries[0].metrics["perplexity"] == pytest.approx(
        outcomes[0].report["perplexity"].metrics["ppl"] * (1 + entries[0].metrics["perplexity_growth"]), rel=1e-3)
    assert entries[2].metrics == {} and repo.log()[0].metrics == {}  # a config commit; and not asked for
    out = cathrepo("log", "--metrics", "-n", "1", cwd=repo.root).stdout
    assert f"ppl {entries[0].metrics['perplexity']:.2f}" in out
    assert f"norm {entries[0].metrics['norm_growth']:+.1%}" in out
    assert "ppl" not in cathrepo("log", "-n", "1", cwd=repo.root).stdout

