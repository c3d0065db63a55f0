"""Promotion, rollback and the deployment log in a real repository on a tiny model: the round trip,
rollbacks walking back, refusals that leave nothing behind, and tampering that verify names by line."""

from __future__ import annotations

import json
import subprocess

import pytest

from cathrepo.config import dump_config, load_config
from cathrepo.exceptions import (
    GateFailedError,
    GitError,
    InvalidInputError,
    NotFoundError,
    VerificationError,
)
from cathrepo.facts.schema import EditRequest
from cathrepo.gates.results import GateReport, GateResult
from cathrepo.repo import Repo, layout
from tests.func.test_repo_flow import FACT, _tune

pytestmark = pytest.mark.usefixtures("one_thread")


def promote_gates(repo: Repo, names: list[str]) -> None:
    """Run only ``names`` at the promote stage (the default's retention, perplexity and MMLU measure
    nothing on a random tiny model, slowly)."""
    config = load_config(repo.root / layout.CONFIG)
    stages = {**config.gates.get("stages", {}), "promote": names}
    (repo.root / layout.CONFIG).write_text(dump_config(type(config)(base=config.base, edit=config.edit,
                                                                    gates={**config.gates, "stages": stages})))
    repo.git.add([layout.CONFIG])
    repo.git.commit("Promote-stage gates for a tiny model")


def marker(repo: Repo, name: str) -> str:
    """A signed commit that changes nothing: a new revision to promote without computing an edit."""
    return repo.git.commit(f"Marker {name}", allow_empty=True, sign_with=repo.signing_key())


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    promote_gates(repo, ["regression"])
    return repo


def _log_lines(repo: Repo) -> list[dict]:
    return [json.loads(line) for line in (repo.root / layout.DEPLOYMENTS).read_text().splitlines()]


def test_promote_and_rollback_round_trip(repo):
    base = repo.git.head()  # no edit active: what the base model alone serves
    first = repo.promote(base, "canary", "the base model first")
    assert first.entry.previous is None and first.entry.commit == base
    assert first.entry.by == repo.signing_key().principal
    assert first.entry.gates["ran"] and first.entry.gates["passed"] and first.report.stage == "promote"
    commit = repo.git.log(max_count=1)[0]
    assert commit.sha == first.commit and commit.parents == (base,)
    assert {k: commit.trailers[k] for k in ("Cathrepo-Action", "Cathrepo-Env", "Cathrepo-Deploy")} == {
        "Cathrepo-Action": "promote", "Cathrepo-Env": "canary", "Cathrepo-Deploy": base}
    assert commit.body.startswith("the base model first")
    assert subprocess.run(["git", "verify-commit", first.commit], cwd=repo.root, capture_output=True).returncode == 0
    assert repo.git.list_files("HEAD").count(layout.DEPLOYMENTS) == 1 and repo.git.status_porcelain() == []
    # an edit goes to canary, gated against the base model (what canary served), and to production ungated
    (edit,) = repo.edit([EditRequest(FACT)])
    second = repo.promote(edit.commit, "canary")
    assert second.entry.previous == base and second.report.passed
    prod = repo.promote(edit.commit, "production", "hotfix", gate=False)
    assert prod.report is None and prod.entry.gates == {"ran": False, "passed": None, "forced": False,
                                                        "verdict": "not run (--no-gate)", "results": {}}
    third = marker(repo, "three")
    repo.promote(third, "canary", gate=False)
    log = repo.deployments()
    assert [(e.env, e.commit) for e in log.entries] == [("canary", base), ("canary", edit.commit),
                                                         ("production", edit.commit), ("canary", third)]
    assert log.current == {"canary": third, "production": edit.commit}
    assert [e.commit for e in repo.deployments("canary").entries] == [base, edit.commit, third]
    # rolling back twice goes two steps back; a third has nowhere to go
    back = repo.rollback("canary", "third is broken")
    assert (back.entry.action, back.entry.commit, back.entry.previous) == ("rollback", edit.commit, third)
    assert repo.git.log(max_count=1)[0].trailers["Cathrepo-Action"] == "rollback"
    assert repo.rollback("canary").entry.commit == base
    with pytest.raises(InvalidInputError, match="nothing to roll back to"):
        repo.rollback("canary")
    with pytest.raises(InvalidInputError, match="Nothing was ever promoted to 'staging'"):
        repo.rollback("staging")
    assert repo.deployments().current == {"canary": base, "production": edit.commit}
    assert [line["action"] for line in _log_lines(repo)] == ["promote"] * 4 + ["rollback"] * 2
    report = repo.verify()
    assert report.ok, report.issues
    assert report.deployments == 6
    # each line is attributed to the commit that added it (its allowed_signers judge the line's key)
    from cathrepo.repo.written import line_commits

    head = repo.git.head()
    by_line = line_commits(repo, head, layout.DEPLOYMENTS, repo.git.show_file(head, layout.DEPLOYMENTS))
    assert by_line[:3] == [first.commit, second.commit, prod.commit] and by_line[-1] == head
    assert by_line[3] == repo.git.rev_parse(f"{head}~2") and len(set(by_line)) == 6
    # the log as it was at an older revision
    assert repo.deployments(rev=second.commit).current == {"canary": edit.commit}


def test_refusals(repo):
    head = repo.git.head()
    repo.git.run(["checkout", "-q", "-b", "side"])
    side = marker(repo, "side")
    repo.git.run(["checkout", "-q", "main"])
    with pytest.raises(InvalidInputError, match="not in the history of HEAD") as err:
        repo.promote(side, "canary")
    assert "Merge it" in err.value.hint
    with pytest.raises(NotFoundError):
        repo.promote("no-such-branch", "canary")
    with pytest.raises(InvalidInputError, match="cannot name an environment"):
        repo.promote(head, "Production")
    repo.promote(head, "canary", gate=False)
    with pytest.raises(InvalidInputError, match="already serves"):
        repo.promote(head, "canary", gate=False)
    (repo.root / "notes.txt").write_text("x\n")
    repo.git.add(["notes.txt"])
    with pytest.raises(InvalidInputError, match="Changes are staged"):
        repo.promote(head, "production", gate=False)
    repo.git.unstage(["notes.txt"])
    subprocess.run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", "unsigned"],
                   cwd=repo.root, check=True)
    with pytest.raises(VerificationError, match="does not verify: commit"):
        repo.promote("HEAD", "production", gate=False)
    assert len(_log_lines(repo)) == 1


def _failing(*args, **kwargs) -> GateReport:
    return GateReport((GateResult("regression", False, {"broken": 3.0}, {"regression_max_broken": 0.05}),),
                      stage="promote")


def test_a_failed_gate_leaves_the_file_and_git_untouched(repo, monkeypatch):
    monkeypatch.setattr("cathrepo.repo.gate.gate", _failing)
    head, status = repo.git.head(), repo.git.status_porcelain()
    with pytest.raises(GateFailedError, match="Promoting .* to canary failed its gates: regression FAIL"):
        repo.promote(head, "canary")
    assert repo.git.head() == head and repo.git.status_porcelain() == status
    assert not (repo.root / layout.DEPLOYMENTS).exists()
    forced = repo.promote(head, "canary", "known regression, accepted", force=True)
    assert forced.entry.gates == {"ran": True, "passed": False, "forced": True, "verdict": "FAIL (forced) (0/1)",
                                  "results": {"regression": "FAIL"}}
    assert repo.git.log(max_count=1)[0].trailers["Cathrepo-Gates"] == "FAIL (forced) (0/1)"
    assert repo.verify().ok


def test_a_failure_while_committing_leaves_nothing_half_written(repo, monkeypatch):
    from cathrepo.repo.git import Git

    head = repo.git.head()

    def refuse(self, *args, **kwargs):
        raise GitError("git commit failed: a hook said no")

    with monkeypatch.context() as patch:
        patch.setattr(Git, "commit", refuse)
        with pytest.raises(GitError):
            repo.promote(head, "canary", gate=False)
    assert not (repo.root / layout.DEPLOYMENTS).exists()
    assert repo.git.head() == head and repo.git.status_porcelain() == []
    repo.promote(head, "canary", gate=False)
    repo.promote(marker(repo, "later"), "canary", gate=False)  # so that there is something to roll back to
    newest = marker(repo, "newest")
    before = (repo.root / layout.DEPLOYMENTS).read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(Git, "commit", lambda self, *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            repo.promote(newest, "canary", gate=False)
        with pytest.raises(KeyboardInterrupt):
            repo.rollback("canary")
    assert (repo.root / layout.DEPLOYMENTS).read_bytes() == before
    assert repo.git.head() == newest and repo.git.status_porcelain() == []
    assert repo.verify().ok


def _commit_log(repo: Repo, lines: list[bytes], message: str) -> None:
    (repo.root / layout.DEPLOYMENTS).write_bytes(b"".join(lines))
    repo.git.add([layout.DEPLOYMENTS])
    repo.git.commit(message)


def _issues(repo: Repo) -> list[str]:
    report = repo.verify()
    assert not report.ok
    return [str(i) for i in report.issues]


def test_tampering_is_caught_and_the_line_named(repo):
    for name in ("one", "two", "three"):
        repo.promote(marker(repo, name), "canary", name, gate=False)
    good = repo.git.head()
    lines = (repo.root / layout.DEPLOYMENTS).read_bytes().splitlines(keepends=True)

    def restore() -> None:
        repo.git.run(["reset", "-q", "--hard", good])
        assert repo.verify().ok

    _commit_log(repo, [lines[0], lines[1].replace(b'"reason":"two"', b'"reason":"tw0"'), lines[2]], "a changed byte")
    issues = _issues(repo)
    assert any(i.startswith("deployments.jsonl line 2: the entry was changed after it was signed") for i in issues)
    assert any(i.startswith("deployments.jsonl line 2") and "append-only" in i for i in issues)
    with pytest.raises(VerificationError, match="deployments.jsonl line 2"):
        repo.deployments()
    restore()
    _commit_log(repo, [lines[0], lines[2]], "a deleted line")
    assert any(i.startswith("deployments.jsonl line 2: the hash chain is broken") for i in _issues(repo))
    restore()
    _commit_log(repo, [lines[0], lines[2], lines[1]], "reordered lines")
    assert any(i.startswith("deployments.jsonl line 2: the hash chain is broken") for i in _issues(repo))
    restore()
    _commit_log(repo, lines[:2], "the last line cut")  # no later line vouches for it: the file's history does
    assert any(i.startswith("deployments.jsonl line 3") and "append-only" in i for i in _issues(repo))
    restore()
    (repo.root / layout.DEPLOYMENTS).write_bytes(b"".join(lines[:2]))  # the work tree only
    assert any(i.startswith("deployments.jsonl: the copy in the work tree differs") for i in _issues(repo))
    with pytest.raises(InvalidInputError, match="not committed"):
        repo.rollback("canary")
    restore()
