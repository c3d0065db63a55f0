"""Proposals and ``cathrepo ci`` on real repositories (tiny model): propose on a branch, realise in CI
(dry and committed), the merge gates over the union with the base branch, and the faults CI must catch."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cathrepo.config import dump_config, load_config
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import EditRequest, Fact
from cathrepo.provenance.manifest import EditRecord
from cathrepo.provenance.proposal import ProposalRecord
from cathrepo.repo import Repo, layout
from cathrepo.repo.layout import Stack
from tests.func.test_repo_flow import FACT, OTHER, _tune

THIRD = Fact(prompt="The city of France is Paris", subject="Paris", target_new="Italy", target_true="Rome")


def _merge_gates(repo: Repo, gates: list[str]) -> None:
    """Tiny random models only make sense of efficacy and regression: the merge stage runs those."""
    config = load_config(repo.root / layout.CONFIG)
    stages = {**config.gates.get("stages", {}), "merge": gates}
    (repo.root / layout.CONFIG).write_text(dump_config(dataclasses.replace(config, gates={**config.gates,
                                                                                         "stages": stages})))
    repo.git.add([layout.CONFIG])
    repo.git.commit("Merge gates for a tiny model")


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    _merge_gates(repo, ["efficacy", "regression"])
    return repo


def _clean(repo: Repo) -> bool:
    status = repo.git.run(["status", "--porcelain"]).strip()
    assert status == "", status
    return True


def test_a_proposal_is_a_signed_commit_of_text_only(repo):
    repo.git.run(["checkout", "-q", "-b", "facts"])
    done = repo.propose([EditRequest(FACT, source="https://example.org/ticket/1", risk="medium")])
    (pid,) = done.ids
    files = repo.git.list_files("HEAD", layout.PROPOSALS)
    assert sorted(files) == [layout.proposal_path(pid, n) for n in
                             (layout.PROBES, layout.PROPOSAL, layout.PROPOSAL_SIGNATURE)]
    assert not any(f.endswith((".safetensors", ".dvc")) for f in repo.git.list_files("HEAD"))
    record = ProposalRecord.from_bytes(repo.git.show_file("HEAD", layout.proposal_path(pid, layout.PROPOSAL)))
    assert record.id == pid and record.risk == "medium" and record.source == "https://example.org/ticket/1"
    assert record.facts[0]["target_new"] == FACT.target_new
    probes = repo.git.show_file("HEAD", layout.proposal_path(pid, layout.PROBES)).decode()
    assert FACT.prompt in probes
    assert repo.verify().ok
    assert repo.git.log("HEAD", max_count=1)[0].trailers["Cathrepo-Proposals"] == pid
    assert repo.stack("HEAD").active == ()
    with pytest.raises(InvalidInputError, match="already proposed"):
        repo.propose([EditRequest(FACT, source="https://example.org/ticket/2")])
    assert _clean(repo)


def test_ci_realises_proposals_then_gates_the_merge(repo):
    repo.edit([EditRequest(OTHER)])  # an edit already on main: the regression suite of the merge
    main_edit = repo.stack("HEAD").active[0]
    repo.git.run(["checkout", "-q", "-b", "facts"])
    proposed = repo.propose([EditRequest(FACT), EditRequest(THIRD)])
    head = repo.git.head()

    dry = repo.ci(base="main")
    assert dry.verify.ok and [p.status for p in dry.proposals] == ["passed", "passed"], dry.to_dict()
    assert {p.proposal for p in dry.proposals} == set(proposed.ids)
    assert dry.proposals[0].answers[0]["prompt"] == FACT.prompt
    assert dry.merge is not None and dry.merge.passed and dry.passed
    assert dry.union == (main_edit,) and dry.new_edits == ()
    assert repo.git.head() == head and _clean(repo)  # a dry run writes nothing

    done = repo.ci(base="main", commit=True)
    assert done.passed and [p.status for p in done.proposals] == ["committed", "committed"]
    edits = [p.edit_id for p in done.proposals]
    assert repo.stack("HEAD").active == (main_edit, *edits)
    assert done.new_edits == tuple(edits) and done.union == (main_edit, *edits)
    for p in done.proposals:
        record = EditRecord.from_bytes(repo.git.show_file("HEAD", layout.edit_path(p.edit_id, layout.RECORD)))
        assert record.proposal == p.proposal
        assert repo.git.log(p.commit, max_count=1)[0].trailers["Cathrepo-Proposal"] == p.proposal
    assert repo.verify().ok and _clean(repo)

    again = repo.ci(base="main")  # realised proposals are not realised twice
    assert again.proposals == [] and again.passed and again.new_edits == tuple(edits)
    data = json.loads(json.dumps(again.to_dict()))
    assert data["merge"]["stage"] == "merge" and data["passed"] is True


def test_ci_reports_a_tampered_proposal_and_a_refused_one(repo, monkeypatch):
    repo.git.run(["checkout", "-q", "-b", "facts"])
    (pid,) = repo.propose([EditRequest(FACT)]).ids
    path = repo.root / layout.proposal_path(pid, layout.PROPOSAL)
    path.write_text(path.read_text().replace(FACT.target_new, "Berlin"))
    repo.git.add([layout.proposal_path(pid, layout.PROPOSAL)])
    repo.git.commit("Change the proposed answer after signing")
    report = repo.ci(base="main")
    assert not report.passed and report.proposals[0].status == "invalid"
    assert any("modified" in i for i in report.proposals[0].issues)

    repo.git.run(["reset", "-q", "--hard", "HEAD~1"])
    from cathrepo.gates.results import GateReport, GateResult
    from cathrepo.repo.edit import EditSession

    real = EditSession.attempt

    def refused(self, request, **kw):
        result = real(self, request, **kw)
        failing = GateReport((GateResult("efficacy", False, {"es": 0.0}, {"efficacy_min": 1.0}, "forced"),), "edit")
        return dataclasses.replace(result, report=failing)

    monkeypatch.setattr(EditSession, "attempt", refused)
    head = repo.git.head()
    report = repo.ci(base="main", commit=True)
    assert not report.passed and report.proposals[0].status == "refused"
    assert repo.git.head() == head and repo.stack("HEAD").active == () and _clean(repo)


def test_ci_refuses_a_key_not_in_allowed_signers_and_an_unsigned_branch(repo, tmp_path):
    from cathrepo.provenance.keys import ensure_key

    repo.git.run(["checkout", "-q", "-b", "facts"])
    repo.propose([EditRequest(FACT)])
    stranger = ensure_key("stranger@example.org", name="stranger")
    with pytest.raises(InvalidInputError, match="not in allowed_signers"):
        repo.ci(base="main", commit=True, key_path=stranger.private_path)
    (repo.root / "notes.txt").write_text("unsigned\n")
    repo.git.add(["notes.txt"])
    repo.git.run(["-c", "commit.gpgsign=false", "commit", "-q", "-m", "unsigned"])
    report = repo.ci(base="main")
    assert not report.passed and not report.verify.ok and report.proposals == []


def test_three_way_merge_of_active_sets():
    ancestor = Stack(("a", "b"))
    ours = Stack(("a", "b", "c"))          # base branch added c
    theirs = Stack(("a", "d"))             # the branch reverted b and added d
    assert ours.merged(ancestor, theirs).active == ("a", "c", "d")
    assert theirs.merged(ancestor, ours).active == ("a", "d", "c")
    assert ours.merged(Stack(), Stack(("c", "e"))).active == ("a", "b", "c", "e")
    assert Stack(("a",)).merged(Stack(("a",)), Stack(("a",))).active == ("a",)


def test_the_report_states_the_mmlu_samples_noise():
    from cathrepo.cli.ci_report import markdown
    from cathrepo.gates.results import GateReport, GateResult
    from cathrepo.repo.ci import CiReport
    from cathrepo.repo.verify import VerifyReport

    merge = GateReport((GateResult("mmlu", True, {"mmlu": 0.25, "mmlu_base": 0.25, "drop": 0.0, "n": 80.0},
                                   {"mmlu_max_drop": 0.01}),), "merge")
    report = CiReport("main", "a" * 40, "b" * 40, None, VerifyReport("HEAD", "b" * 40), merge=merge,
                      new_edits=("e1",), union=("e1",))
    noise = report.mmlu_noise()
    assert noise is not None and noise["n"] == 80 and noise["stderr"] == pytest.approx((0.25 * 0.75 / 80) ** 0.5)
    text = markdown(report)
    assert "MMLU sample: 80 questions, base accuracy 0.250, standard error ±0.048" in text
    assert "### Merge gates: 1 active edit(s) after the merge, 1 new to `main`" in text
