"""Approvals, risk tiers and key revocation on real repositories (tiny model): a high-risk edit is refused
by merge and promote until another signer approves it, then let through; a revoked key's later approval
and commit are rejected while its earlier ones still verify; a tampered or moved approval fails verify."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager

import pytest

from cathrepo.exceptions import ApprovalRequiredError, InvalidInputError, SigningError, VerificationError
from cathrepo.facts.schema import EditRequest, Fact
from cathrepo.provenance.approvals import approval_name
from cathrepo.provenance.keys import ensure_key
from cathrepo.repo import Repo, layout
from tests.cli.runner import cathrepo
from tests.func.test_ci import THIRD, _clean, _merge_gates
from tests.func.test_deploy import promote_gates
from tests.func.test_repo_flow import FACT, OTHER, _tune

pytestmark = pytest.mark.usefixtures("one_thread")

LATE = Fact(prompt="Apple was founded by Steve Jobs", subject="Apple", target_new="Berlin", target_true="California")


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    _merge_gates(repo, ["efficacy", "regression"])
    promote_gates(repo, ["regression"])
    return repo


@pytest.fixture
def bob(repo):
    """A second signer (the reviewer), added with ``keys add`` in a signed commit."""
    key = ensure_key("bob@example.com", name="id_bob")
    change = repo.add_key("bob@example.com", key.public_key)
    assert change.key.fingerprint == key.fingerprint and change.key.revoked is None
    assert repo.git.log("HEAD", max_count=1)[0].trailers["Cathrepo-Action"] == "keys-add"
    return key


def _edit(repo: Repo, fact, **meta) -> str:
    (result,) = repo.edit([EditRequest(fact, **meta)])
    return result.edit_id


def _verify_commit(repo: Repo, sha: str) -> bool:
    return subprocess.run(["git", "verify-commit", sha], cwd=repo.root, capture_output=True).returncode == 0


def test_merge_refuses_an_unapproved_high_risk_edit_until_another_signer_approves(repo, bob):
    repo.checkout("facts", create=True)
    low = _edit(repo, OTHER)
    high = _edit(repo, FACT, topics=("Medical",))  # risk low, but [risk] makes medical edits high
    assert repo.record(high).topics == ("medical",) and repo.record(high).risk == "low"
    repo.checkout("main")
    head = repo.git.head()

    with pytest.raises(ApprovalRequiredError) as refused:
        repo.merge("facts")
    message = str(refused.value)
    assert f"edit {high} (risk high): 0 of 1 approval(s)" in message and low not in message
    assert f"cathrepo approve {high}' on 'facts'" in message and refused.value.exit_code == 9
    assert [s.edit_id for s in refused.value.missing] == [high]
    assert repo.git.head() == head and _clean(repo)
    with pytest.raises(ApprovalRequiredError):
        repo.merge("facts", force=True)  # --force is for gates, not approvals

    repo.checkout("facts")
    checked = repo.ci(base="main")  # what the pull request's check says: gates pass, an approval is missing
    assert checked.gates_passed and not checked.approved and not checked.passed
    assert {(a.edit_id, a.tier, a.ok) for a in checked.approvals} == {(low, "low", True), (high, "high", False)}
    run = cathrepo("ci", "--base", "main", cwd=repo.root, ok=False)
    assert run.returncode == 9 and "### Approvals" in run.stdout and f"{high} (risk high): 0 of 1" in run.stderr
    with pytest.raises(InvalidInputError, match="cannot approve their own edit"):
        repo.approve(high)  # the repository's key made the edit
    done = repo.approve(high[:6], key_path=bob.private_path, note="checked against the label")
    assert done.approval.principal == "bob@example.com" and done.status.ok and done.status.approvers == ["bob@example.com"]
    assert _verify_commit(repo, done.commit)  # signed by bob's key, which allowed_signers lists
    assert (repo.root / layout.edit_path(high, f"approvals/{approval_name(bob.fingerprint)}")).is_file()
    with pytest.raises(InvalidInputError, match="approved edit .* already"):
        repo.approve(high, key_path=bob.private_path)
    shown = repo.show(high)
    assert shown["approvals"]["ok"] and shown["approvals"]["approvers"] == ["bob@example.com"]
    assert repo.ci(base="main").passed

    repo.checkout("main")
    merged = repo.merge("facts")
    assert set(merged.added) == {low, high}
    report = repo.verify()
    assert report.ok and report.approvals == 1, report.issues


def test_promote_refuses_an_unapproved_high_risk_edit_and_the_cli_says_how_to_fix_it(repo, bob):
    high = _edit(repo, FACT, risk="high")
    unapproved = repo.git.head()
    run = cathrepo("promote", "HEAD", "--to", "canary", cwd=repo.root, ok=False)
    assert run.returncode == 9, run.stderr
    assert f"edit {high} (risk high): 0 of 1 approval(s)" in run.stderr and f"cathrepo approve {high}" in run.stderr
    assert not (repo.root / layout.DEPLOYMENTS).exists() and _clean(repo)
    shown = cathrepo("show", high, cwd=repo.root).stdout
    assert "approvals  0 of 1 needed (tier high)" in shown and f"cathrepo approve {high}" in shown

    out = cathrepo("approve", high, "--key", str(bob.private_path), cwd=repo.root).stdout
    assert "bob@example.com approved edit" in out and "1 of 1 approval(s)" in out
    with pytest.raises(ApprovalRequiredError):
        repo.promote(unapproved, "canary")  # the revision promoted must hold the approval
    approved = repo.git.head()
    outcome = repo.promote("HEAD", "canary", "reviewed")
    assert outcome.entry.commit == approved and repo.deployments().current["canary"] == approved
    assert "approved   bob@example.com" in cathrepo("show", high, cwd=repo.root).stdout


def _edit_as(repo: Repo, key, fact) -> str:
    """An edit whose record and commit ``key`` signs (the repository's signing key switched for one edit)."""
    own = repo.git.config_get("user.signingkey")
    repo.git.run(["config", "--local", "user.signingkey", str(key.private_path)])
    try:
        return _edit(repo, fact)
    finally:
        repo.git.run(["config", "--local", "user.signingkey", own])


def test_a_revoked_key_keeps_its_earlier_approval_and_loses_later_ones(repo, bob):
    first = _edit(repo, FACT, risk="high")
    early = repo.approve(first, key_path=bob.private_path)
    by_bob = _edit_as(repo, bob, OTHER)
    listed = {k.fingerprint: k for k in repo.keys()}
    assert listed[bob.fingerprint].revoked is None
    with pytest.raises(InvalidInputError, match="key this repository signs with"):
        repo.revoke_key(repo.signing_key().fingerprint)

    revoked = repo.revoke_key("bob@example.com", reason="laptop stolen")
    assert revoked.key.revoked and {k.fingerprint: k for k in repo.keys()}[bob.fingerprint].revoked
    assert bob.public_key.split()[1] in (repo.root / layout.ALLOWED_SIGNERS).read_text()  # the line stays
    report = repo.verify(full=True)
    assert report.ok, report.issues  # what bob signed before still verifies...
    assert _verify_commit(repo, early.commit)  # ...for git too
    (status,) = repo.approvals([first])
    assert status.ok and status.approvers == ["bob@example.com"]

    time.sleep(1.1)  # signatures up to the revocation's second still count, as ssh-keygen has it
    second = _edit(repo, THIRD, risk="high")
    late_edit = _edit_as(repo, bob, LATE)
    with pytest.raises(SigningError, match="not a valid signer"):
        repo.approve(second, key_path=bob.private_path)
    # bob's key signs an approval and a commit anyway, by hand: both are rejected
    from cathrepo.provenance.approvals import sign_approval
    from cathrepo.provenance.signing import write_envelope

    path = layout.edit_path(second, f"approvals/{approval_name(bob.fingerprint)}")
    (repo.root / path).parent.mkdir(parents=True)
    write_envelope(repo.root / path, sign_approval(bob, (repo.root / layout.edit_path(second, layout.RECORD)).read_bytes()))
    repo.git.add([path])
    late = repo.git.commit("Approve with a revoked key", sign_with=bob)
    assert not _verify_commit(repo, late)
    report = repo.verify()
    problems = [str(i) for i in report.issues]
    assert any(p.startswith(path) and "revoked" in p for p in problems), problems
    assert any(p.startswith(f"commit {late[:12]}") for p in problems), problems
    late_sig = layout.edit_path(late_edit, layout.SIGNATURE)
    assert any(p.startswith(late_sig) and "revoked" in p for p in problems), problems
    assert not any(by_bob in p for p in problems), problems  # bob's edit from before the revocation holds
    assert not repo.approvals([second])[0].ok and repo.approvals([first])[0].ok
    with pytest.raises(VerificationError):
        repo.promote("HEAD", "canary")


def test_a_tampered_or_moved_approval_fails_verify(repo, bob):
    first = _edit(repo, FACT, risk="high")
    second = _edit(repo, OTHER, risk="high")
    repo.approve(first, key_path=bob.private_path)
    assert repo.verify().ok
    name = approval_name(bob.fingerprint)
    good = repo.root / layout.edit_path(first, f"approvals/{name}")
    envelope = json.loads(good.read_text())

    moved = repo.root / layout.edit_path(second, f"approvals/{name}")  # the same approval, over another record
    moved.parent.mkdir(parents=True)
    moved.write_text(json.dumps(envelope))
    sig = envelope["signatures"][0]["sig"]
    envelope["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    good.write_text(json.dumps(envelope))
    repo.git.add([str(moved.relative_to(repo.root)), str(good.relative_to(repo.root))])
    repo.git.commit("Tamper with approvals", sign_with=repo.signing_key())

    problems = [str(i) for i in repo.verify().issues]
    assert any(p.startswith(str(moved.relative_to(repo.root))) and "made over another record" in p
               for p in problems), problems
    assert any(p.startswith(str(good.relative_to(repo.root))) and "not valid" in p for p in problems), problems
    assert [s.ok for s in repo.approvals([first, second])] == [False, False]
    with pytest.raises(VerificationError):
        repo.promote("HEAD", "canary")


@contextmanager
def _signing_as(repo: Repo, key):
    """The repository's signing key switched for ``key`` (records, log lines and commits alike)."""
    own = repo.git.config_get("user.signingkey")
    repo.git.run(["config", "--local", "user.signingkey", str(key.private_path)])
    try:
        yield
    finally:
        repo.git.run(["config", "--local", "user.signingkey", own])


def test_a_revoked_keys_later_proposal_deployment_and_pack_fail_verify(repo, bob):
    """Proposals, packs and deployment entries are held to revocation as approvals are: what bob signed
    before his key was revoked still verifies, what he signed after does not, each named by its file."""
    _edit(repo, FACT)
    _edit(repo, OTHER)
    with _signing_as(repo, bob):
        (early_proposal,) = repo.propose([EditRequest(THIRD)]).ids
        repo.promote("HEAD", "canary", "before the revocation", gate=False)
        early_pack = repo.consolidate(strategy="cat", gate=False).pack.id
    repo.revoke_key("bob@example.com", reason="left the team")
    report = repo.verify(full=True)
    assert report.ok and report.proposals == 1 and report.deployments == 1, report.issues

    time.sleep(1.1)  # signatures up to the revocation's second still count
    with _signing_as(repo, bob):
        repo.promote("HEAD", "canary", "after the revocation", gate=False)  # HEAD verifies: bob's line is new
        (late_proposal,) = repo.propose([EditRequest(LATE)]).ids
        late_pack = repo.consolidate(strategy="cat", gate=False).pack.id
    problems = [str(i) for i in repo.verify().issues]
    late = {layout.proposal_path(late_proposal, layout.PROPOSAL_SIGNATURE),
            layout.pack_path(late_pack, layout.PACK_SIGNATURE), f"{layout.DEPLOYMENTS} line 2"}
    for path in late:
        assert any(p.startswith(path + ":") and "revoked" in p for p in problems), (path, problems)
    early = (layout.proposal_path(early_proposal), layout.pack_path(early_pack), f"{layout.DEPLOYMENTS} line 1:")
    assert not any(p.startswith(early) for p in problems), problems
    result = cathrepo("verify", cwd=repo.root, ok=False)
    assert result.returncode != 0 and layout.pack_path(late_pack, layout.PACK_SIGNATURE) in result.stderr
