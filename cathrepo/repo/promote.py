"""``cathrepo promote REV --to ENV``, ``cathrepo rollback ENV`` and ``cathrepo deployments``.

A promotion records that an environment (``canary``, ``production``) serves a revision from now on; a
rollback returns the environment to the revision it served before its latest promotion. Both append one
signed line to ``deployments.jsonl`` (:mod:`cathrepo.provenance.deployments`) and commit it in a signed
commit whose trailers name the action, the environment and the revision, so ``git log`` tells the same
story as the log. The revision must be in HEAD's history and verify, every edit active in it must hold the
approvals its risk tier needs (:mod:`cathrepo.repo.approve`), and the promote-stage gates run on
the change from what the environment serves now (the base model alone when it serves nothing) to it;
a failing gate commits nothing unless forced, and a forced promotion says so in its line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import GateFailedError, GitError, InvalidInputError, VerificationError
from cathrepo.files import atomic_write
from cathrepo.provenance.deployments import Deployment, LogCheck, check_env, sign_deployment
from cathrepo.repo import layout
from cathrepo.repo.deploy_log import line_issues, read_log
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.gates.results import GateReport
    from cathrepo.repo import Repo


@dataclass(frozen=True)
class DeployOutcome:
    """A promotion or rollback: the signed entry, the commit that recorded it and the gate report."""

    entry: Deployment
    commit: str
    report: GateReport | None

    def to_dict(self) -> dict[str, Any]:
        return {"recorded_in": self.commit, **self.entry.to_dict(),
                "report": self.report.to_dict() if self.report is not None else None}


@dataclass(frozen=True)
class Deployments:
    """The verified log at a revision: its entries (of one environment, when asked) and what each
    environment serves."""

    rev: str
    commit: str
    entries: list[Deployment]
    current: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"rev": self.rev, "commit": self.commit, "current": self.current,
                "entries": [{k: v for k, v in e.to_dict().items() if k != "signature"} for e in self.entries]}


def gate_summary(report: GateReport | None, *, skipped: str = "") -> dict[str, Any]:
    """What a line records of the gates: the verdict and each gate's status; ``ran`` false (and the
    verdict saying why) when none ran."""
    if report is None:
        return {"ran": False, "passed": None, "forced": False, "verdict": f"not run{skipped}", "results": {}}
    return {"ran": True, "passed": report.passed, "forced": not report.passed,
            "verdict": report.verdict(forced=not report.passed), "results": {r.name: r.status for r in report.results}}


@locked("promote")
def promote(
    repo: Repo,
    rev: str,
    env: str,
    reason: str = "",
    *,
    gate: bool = True,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> DeployOutcome:
    """Record that ``env`` serves ``rev`` from now on, in a signed line and a signed commit.

    Args:
        rev: a revision in HEAD's history.
        reason: why, in the user's words (``-m``).
        gate: run the promote-stage gates from what ``env`` serves now to ``rev``.
        force: promote even when those gates fail (the line records the failure, marked forced).

    Raises:
        InvalidInputError: a bad environment name, ``rev`` not in HEAD's history, or already served there.
        VerificationError: ``rev`` or the log does not verify.
        ApprovalRequiredError: an active edit lacks the approvals its risk tier needs; nothing was committed.
        GateFailedError: a gate failed and ``force`` is not set; nothing was committed.
    """
    from cathrepo.repo.gate import BASE
    from cathrepo.repo.gate import gate as run_gate

    check_env(env)
    # 1. the revision: in HEAD's history, and every signature and hash up to it verifies
    sha = _in_history(repo, rev)
    if progress is not None:
        progress(f"verifying {sha[:12]}")
    verified = repo.verify(sha)
    if not verified.ok:
        raise VerificationError(f"{rev} ({sha[:12]}) does not verify: {verified.issues[0]}.",
                                hint=f"Run 'cathrepo verify {rev}' for the full list; promote only what verifies.")
    # 2. every active edit has the approvals its risk tier needs, by HEAD's policy (--force does not waive them)
    from cathrepo.repo.approve import require_approvals

    require_approvals(repo, sha, repo.stack(sha).active, config=repo.config_at(repo.git.rev_parse("HEAD")),
                      doing=f"Promoting {sha[:12]} to {env}",
                      then="then promote the commit that holds the approvals (HEAD)")
    # 3. the log as committed at HEAD, unchanged in the work tree
    data, log = _committed_log(repo)
    previous = log.current.get(env)
    if previous == sha:
        raise InvalidInputError(f"'{env}' already serves {sha[:12]}.", hint="See 'cathrepo deployments'.")
    # 4. the gates, from what the environment serves now (the base model alone when nothing) to the revision
    report = None
    if gate:
        report = run_gate(repo, sha, stage="promote", against=previous or BASE, policy_rev="HEAD",
                          progress=progress)
        if not report.passed and not force:
            raise GateFailedError.from_report(report, f"Promoting {sha[:12]} to {env}",
                                              hint="Pass --force to promote anyway (the log records it).")
    # 5. the signed line, appended and committed
    entry = Deployment(env=env, action="promote", commit=sha, previous=previous, by="", time=_now(),
                       reason=reason, gates=gate_summary(report, skipped=" (--no-gate)"),
                       prev_sha256=log.last_sha256)
    trailers = report.trailers(per_gate=False, forced=not report.passed) if report is not None else {}
    return _record(repo, data, entry, f"Promote {sha[:12]} to {env}", trailers, report)


@locked("rollback")
def rollback(repo: Repo, env: str, reason: str = "") -> DeployOutcome:
    """Return ``env`` to the revision it served before its latest promotion (a second rollback goes one
    step further back), in a signed line and a signed commit.

    Raises:
        InvalidInputError: ``env`` has nothing to roll back to.
        VerificationError: the log does not verify.
    """
    check_env(env)
    data, log = _committed_log(repo)
    current, target = log.rollback_target(env)
    entry = Deployment(env=env, action="rollback", commit=target, previous=current, by="", time=_now(),
                       reason=reason, gates=gate_summary(None), prev_sha256=log.last_sha256)
    return _record(repo, data, entry, f"Roll back {env} to {target[:12]}", {}, None)


def deployments(repo: Repo, env: str | None = None, rev: str = "HEAD") -> Deployments:
    """The log at ``rev``, verified (every line's signature against the ``allowed_signers`` at ``rev``,
    the hash chain, the commits it names), and each environment's current commit.

    Raises:
        VerificationError: naming the first line that does not verify.
    """
    if env is not None:
        check_env(env)
    sha = repo.git.rev_parse(rev)
    _, log = read_log(repo, sha)
    _refuse_issues(log, rev)
    entries = [e for e in log.entries if env is None or e.env == env]
    current = {k: v for k, v in log.current.items() if env is None or k == env}
    return Deployments(rev, sha, entries, current)


# --- the steps -----------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _in_history(repo: Repo, rev: str) -> str:
    """The full id of ``rev``, which must be HEAD or one of its ancestors."""
    sha = repo.git.rev_parse(rev)
    head = repo.git.rev_parse("HEAD")
    try:
        base = repo.git.run(["merge-base", sha, head]).strip()
    except GitError:  # no common ancestor at all
        base = None
    if base != sha:
        raise InvalidInputError(f"{rev} ({sha[:12]}) is not in the history of HEAD, so it is not promoted from here.",
                                hint="Merge it into this branch first (or check out the branch that holds it), "
                                     "then promote it.")
    return sha


def _committed_log(repo: Repo) -> tuple[bytes, LogCheck]:
    """HEAD's log, verified, after checking that the work tree and the index hold nothing a deployment
    commit would sweep up or overwrite."""
    head = repo.git.rev_parse("HEAD")
    data, log = read_log(repo, head)
    _refuse_issues(log, "HEAD")
    local = repo.root / layout.DEPLOYMENTS
    if (local.read_bytes() if local.exists() else b"") != data:
        raise InvalidInputError(f"{layout.DEPLOYMENTS} has changes that are not committed; the log is only "
                                "appended to by cathrepo.",
                                hint=f"Restore it: git checkout -- {layout.DEPLOYMENTS}")
    staged = [line[3:] for line in repo.git.status_porcelain() if line[0] not in " ?"]
    if staged:
        raise InvalidInputError(f"Changes are staged ({', '.join(staged[:3])}); a deployment commit holds the "
                                "log alone.", hint="Commit or unstage them first (git restore --staged PATH).")
    return data, log


def _refuse_issues(log: LogCheck, rev: str) -> None:
    issues = line_issues(log)
    if issues:
        raise VerificationError(f"{layout.DEPLOYMENTS} at {rev} does not verify: {issues[0]}.",
                                hint="Run 'cathrepo verify' for the full list; restore the log from a good "
                                     "commit before deploying.")


def _record(repo: Repo, data: bytes, entry: Deployment, subject: str, gate_trailers: Mapping[str, str],
            report: GateReport | None) -> DeployOutcome:
    """Sign ``entry``, append it to the log (``data``: the committed bytes) and commit the log alone; on
    any failure the file and the index are as they were."""
    key = repo.signing_key()
    signed = sign_deployment(key, entry)
    path = repo.root / layout.DEPLOYMENTS
    before = path.read_bytes() if path.exists() else None
    trailers = {"Cathrepo-Action": entry.action, "Cathrepo-Env": entry.env, "Cathrepo-Deploy": entry.commit,
                **gate_trailers}
    message = subject + (f"\n\n{entry.reason}" if entry.reason.strip() else "")
    try:
        atomic_write(path, data + signed.to_line() + b"\n")
        repo.git.add([layout.DEPLOYMENTS])
        sha = repo.git.commit(message, trailers, sign_with=key)
    except BaseException:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, before)
        repo.git.unstage([layout.DEPLOYMENTS])
        raise
    return DeployOutcome(signed, sha, report)
