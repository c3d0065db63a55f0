"""``cathrepo ci [--base main]``: what a pre-merge hook or a CI job runs on a branch of edits.

1. Verify the branch (every commit signature, edit signature and file hash).
2. Realise every proposal on the branch that no edit realised yet: attribution → edit → gates, through
   the same :class:`~cathrepo.repo.edit.EditSession` as ``cathrepo edit``, each on top of the ones
   before it; with ``commit`` each passing edit is committed (signed by the CI key when one is given,
   which ``allowed_signers`` must list), else it is held on the stack for the rest of the run only.
3. Run the merge-stage gates on the union of the base branch and the branch (the three-way merge of
   their active sets, plus the realised edits): before = the base branch's active edits, after = the
   union; the new edits' probes are the CounterFact(+) probes, the edits active on both sides the
   regression suite.
4. Every edit new to the base branch, and every proposal realised but not committed, has the approvals
   its risk tier needs (:mod:`cathrepo.repo.approve`, under the base branch's ``[risk]`` and ``[approvals]``).

Both the realising and the merge gates use the base branch's ``cathrepo.toml``: a pull request that
changes the thresholds cannot lower the bar its own edits are held to (the change applies once merged).

The report holds each proposal's gate table and the answer before and after, and the merge gates'
table; it passes only when everything verified, every proposal passed, and the merge gates passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import CathrepoError, InvalidInputError
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from pathlib import Path

    from cathrepo.delta import Delta
    from cathrepo.edits.base import EditResult
    from cathrepo.facts.probes import ProbeSet
    from cathrepo.gates.results import GateReport
    from cathrepo.provenance.keys import SigningKey
    from cathrepo.provenance.proposal import ProposalRecord
    from cathrepo.repo import Repo
    from cathrepo.repo.approve import ApprovalStatus
    from cathrepo.repo.edit import EditSession
    from cathrepo.repo.verify import VerifyReport

ANSWER_TOKENS = 8


@dataclass
class Realised:
    """One proposal's outcome: ``committed``, ``passed`` (not committed: no ``--commit``), ``refused`` by
    its gates, or ``invalid`` (it does not verify)."""

    proposal: str
    summary: str
    status: str
    report: GateReport | None = None
    edit_id: str | None = None
    commit: str | None = None
    answers: list[dict[str, str]] = field(default_factory=list)
    issues: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"proposal": self.proposal, "summary": self.summary, "status": self.status,
                "edit": self.edit_id, "commit": self.commit, "answers": self.answers,
                "issues": list(self.issues), "gates": self.report.to_dict() if self.report else None}


@dataclass
class CiReport:
    """What ``cathrepo ci`` checked and found (rendered as Markdown or JSON by the command line)."""

    base: str
    base_commit: str
    head_commit: str
    merge_base: str | None
    verify: VerifyReport
    proposals: list[Realised] = field(default_factory=list)
    merge: GateReport | None = None
    new_edits: tuple[str, ...] = ()
    union: tuple[str, ...] = ()
    approvals: list[ApprovalStatus] = field(default_factory=list)

    @property
    def gates_passed(self) -> bool:
        """Everything but the approvals: verified, every proposal passed, the merge gates passed."""
        return (self.verify.ok and all(p.status in ("committed", "passed") for p in self.proposals)
                and (self.merge is None or self.merge.passed))

    @property
    def approved(self) -> bool:
        return all(a.ok for a in self.approvals)

    @property
    def passed(self) -> bool:
        return self.gates_passed and self.approved

    def mmlu_noise(self) -> dict[str, float] | None:
        """The MMLU sample's size and the standard error of an accuracy measured on it, sqrt(p(1-p)/n):
        a drop well under two of them is within what this sample can tell apart."""
        if self.merge is None or "mmlu" not in self.merge.names():
            return None
        metrics = self.merge["mmlu"].metrics
        n, acc = float(metrics.get("n", 0.0)), float(metrics.get("mmlu_base", metrics.get("mmlu", 0.0)))
        if n <= 0:
            return None
        return {"n": n, "accuracy": acc, "stderr": math.sqrt(max(acc * (1 - acc), 0.0) / n)}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "base": self.base, "base_commit": self.base_commit,
                "head_commit": self.head_commit, "merge_base": self.merge_base, "verify": self.verify.to_dict(),
                "proposals": [p.to_dict() for p in self.proposals], "new_edits": list(self.new_edits),
                "union": list(self.union), "merge": self.merge.to_dict() if self.merge else None,
                "approvals": [a.to_dict() for a in self.approvals],
                "mmlu_noise": self.mmlu_noise()}


def ci_key(repo: Repo, path: Path | None) -> SigningKey:
    """The key ``ci --commit`` signs with: ``path``, which ``allowed_signers`` must list, else the
    repository's own."""
    from cathrepo.provenance.keys import load_key
    from cathrepo.repo.state import signers_at

    if path is None:
        return repo.signing_key()
    key = load_key(path)
    listed = any(s.public_key == key.public_key_bare and s.allows_principal(key.principal)
                 for s in signers_at(repo, "HEAD"))
    if not listed:
        raise InvalidInputError(f"The CI key {key.fingerprint} ({key.principal}) is not in allowed_signers.",
                                hint="Add its public key line to allowed_signers on the base branch first.")
    return key


@locked("ci")
def ci(repo: Repo, *, base: str = "main", head: str = "HEAD", commit: bool = False, key_path: Path | None = None,
       progress: Callable[[str], None] | None = None) -> CiReport:
    """Verify, realise the pending proposals and gate the merge into ``base`` (see the module docstring).

    ``head``: the branch under test (default HEAD; the pre-merge-commit hook passes ``MERGE_HEAD``, the
    branch being merged in). Realised edits are committed only on HEAD itself."""
    from cathrepo.repo.merge import merge_base
    from cathrepo.repo.propose import pending_proposals

    say = progress or (lambda _msg: None)
    base_commit = repo.git.rev_parse(base)
    on_head = head == "HEAD" or repo.git.rev_parse(head) == repo.git.head()
    head = repo.git.rev_parse(head)
    if commit and not on_head:
        raise InvalidInputError("ci --commit writes the realised edits on the checked-out branch.",
                                hint="Check out the branch under test, or drop --head.")
    key = ci_key(repo, key_path) if commit else None
    say("verify")
    report = CiReport(base, base_commit, head, merge_base(repo, base_commit, head), repo.verify(head))
    if not report.verify.ok:  # nothing is realised; the proposals that do not verify are still named
        try:
            report.proposals += [Realised(p.id, "?", "invalid", issues=p.issues)
                                 for p in pending_proposals(repo, head) if p.record is None]
        except CathrepoError:
            pass  # allowed_signers itself does not read: verify's issues say so
        return report
    pending = pending_proposals(repo, head)
    session = _session(repo, base_commit, head) if pending else None
    held: list[tuple[str, Delta, ProbeSet]] = []
    held_records: list[tuple[str, ProposalRecord]] = []
    for item in pending:
        if item.record is None:
            report.proposals.append(Realised(item.id, "?", "invalid", issues=item.issues))
            continue
        say(f"proposal {item.id}")
        assert session is not None
        outcome, result = _realise(session, item.id, item.record, commit=commit, key=key, progress=progress)
        report.proposals.append(outcome)
        if result is not None and outcome.status == "passed":
            assert result.probes is not None
            held.append((f"proposal:{item.id}", result.delta, result.probes))
            held_records.append((f"proposal:{item.id}", item.record))
    if on_head:
        report.head_commit = repo.git.rev_parse("HEAD")  # with the edits --commit added
    say("merge gates")
    _merge_gates(repo, report, held, session, progress)
    say("approvals")
    _approvals(repo, report, [(pid[len("proposal:"):], r) for pid, r in held_records])
    return report


def _approvals(repo: Repo, report: CiReport, held: list[tuple[str, ProposalRecord]]) -> None:
    """The approval status of every edit new to the base branch, and of each proposal realised but not
    committed (it has none yet), under the base branch's policy."""
    from cathrepo.repo.approve import ApprovalStatus, statuses

    config = repo.config_at(report.base_commit)
    report.approvals = statuses(repo, report.head_commit, report.new_edits, config=config)
    for pid, record in held:
        tier = config.tier(record.risk, record.topics)
        report.approvals.append(ApprovalStatus(f"proposal {pid}", record.summary, tier, config.approvals.required(tier)))


def _session(repo: Repo, base_commit: str, head: str) -> EditSession:
    """Edits are realised on the branch's active set, under the base branch's settings and gates (a
    branch cannot lower its own bar)."""
    from cathrepo.repo.edit import EditSession

    return EditSession.open(repo, config=repo.config_at(base_commit), rev=head)


def _realise(session: EditSession, pid: str, record: ProposalRecord, *, commit: bool, key: SigningKey | None,
             progress: Callable[[str], None] | None) -> tuple[Realised, EditResult | None]:
    """Compute and gate one proposal on the session's stack; commit it or hold it when it passes."""
    from cathrepo.repo.propose import request_of

    request = request_of(record)
    before = [d for _, d in session.active]
    result = session.attempt(request, method=record.method, params=record.params, progress=progress)
    answers = _answers(session, request.facts[0].prompt, before, [*before, result.delta])
    if not result.gates.passed:
        return Realised(pid, record.summary, "refused", result.gates, answers=answers), result
    if commit:
        result = session.commit(request, result, method=record.method, key=key, proposal=pid)
        return Realised(pid, record.summary, "committed", result.gates, result.edit_id, result.commit, answers), result
    assert result.probes is not None
    session.hold(f"proposal:{pid}", result)
    return Realised(pid, record.summary, "passed", result.gates, answers=answers), result


def _answers(session: EditSession, prompt: str, before: list[Delta], after: list[Delta]) -> list[dict[str, str]]:
    """The greedy answer to ``prompt`` before and after the edit, as a reviewer reads it."""
    from cathrepo.delta import applied
    from cathrepo.lm.decoding import greedy_continuations

    out = {}
    for name, deltas in (("before", before), ("after", after)):
        with applied(session.model, *deltas):
            out[name] = greedy_continuations(session.model, session.tokenizer, [prompt],
                                             max_new_tokens=ANSWER_TOKENS)[0]
    return [{"prompt": prompt, **out}]


def _merge_gates(repo: Repo, report: CiReport, held: list[tuple[str, Delta, ProbeSet]],
                 session: EditSession | None, progress: Callable[[str], None] | None) -> None:
    """The merge-stage gates on base → union (see the module docstring); skipped when nothing is new."""
    from cathrepo.repo.merge import gate_union

    ours = repo.stack(report.base_commit)
    ancestor = repo.stack(report.merge_base) if report.merge_base else type(ours)()
    union = ours.merged(ancestor, repo.stack(report.head_commit))
    report.union = union.active
    report.new_edits = tuple(e for e in union.active if e not in ours.active)
    if not held and union.active == ours.active:
        return
    model, tokenizer = (session.model, session.tokenizer) if session is not None else (None, None)
    report.merge = gate_union(repo, before=ours.active, before_rev=report.base_commit, after=union.active,
                              after_rev=report.head_commit, held=[(d, p) for _, d, p in held], model=model,
                              tokenizer=tokenizer, progress=progress)
