"""``cathrepo verify [REV]``: every commit signature, every edit signature, every file hash.

Commits are checked as ``git verify-commit`` checks them against ``allowed_signers`` (in-process for SSH
signatures, :func:`commit_checks`). Each edit's ``edit.json`` must hash to its directory name (the edit id), carry a valid ``edit.sig`` by an
allowed signer (whose key was valid when the record was created), and name the sha256 of every other file
of the edit; each approval (``edits/<id>/approvals/``) must hold (:mod:`cathrepo.repo.approve`); the weights are read from the DVC
cache (fetched from the remote if needed) through the pointer committed at that revision. An issue
names the exact file. The deployment log, when there is one, is checked line by line (signatures, the hash
chain, the commits it names) and by its history, which may only append (:mod:`cathrepo.repo.deploy_log`).
Packs and proposals are checked like edits (id, signature, file hashes). Every signature that is not a
commit's is checked at the time it was made and against the ``allowed_signers`` of the commit that wrote
it, so a revoked key's later signatures fail (:mod:`cathrepo.repo.written`).
What this clone verified before is recorded in an index (:mod:`cathrepo.repo.verified`) and not checked
again, except the weights; ``--full`` checks all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cathrepo.repo import layout
from cathrepo.repo.approve import approval_issues
from cathrepo.repo.deploy_log import log_issues
from cathrepo.repo.propose import proposal_issues
from cathrepo.repo.state import Issue, check_edits
from cathrepo.repo.verified import Verified, signers_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cathrepo.repo import Repo
    from cathrepo.repo.git import Git
    from cathrepo.repo.git_records import SignatureCheck
    from cathrepo.repo.layout import Stack


@dataclass
class VerifyReport:
    """What ``verify`` checked and found."""

    rev: str
    commit: str
    commits: int = 0
    edits: int = 0
    files: int = 0
    deployments: int = 0
    approvals: int = 0
    proposals: int = 0
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict[str, object]:
        return {"rev": self.rev, "commit": self.commit, "ok": self.ok, "commits": self.commits,
                "edits": self.edits, "files": self.files, "deployments": self.deployments,
                "approvals": self.approvals, "proposals": self.proposals, "issues": [str(i) for i in self.issues]}


def commit_checks(git: Git, shas: Sequence[str]) -> dict[str, SignatureCheck]:
    """:meth:`~cathrepo.repo.git.Git.verify_commit` of many commits. SSH signatures are checked in-process
    against the configured ``gpg.ssh.allowedSignersFile`` exactly as git and ssh-keygen check them
    (:mod:`cathrepo.provenance.commit_signatures`: 10,000 commits in seconds, not minutes); a PGP or
    X.509 signature, or a repository without an allowed signers file, is left to git itself."""
    from cathrepo.exceptions import CathrepoError
    from cathrepo.provenance.allowed_signers import parse_allowed_signers
    from cathrepo.provenance.commit_signatures import verify_commit_signature
    from cathrepo.repo.git_records import SignatureCheck

    path = git.allowed_signers_file()
    try:
        signers = parse_allowed_signers(path.read_text(encoding="utf-8"), source=str(path)) \
            if path is not None and path.is_file() else None
    except (CathrepoError, OSError, UnicodeDecodeError):
        signers = None  # git's own check reports what is wrong with the file
    raws = git.read_objects(shas) if signers is not None else {}
    out: dict[str, SignatureCheck] = {}
    for sha in shas:
        check = verify_commit_signature(raws[sha], signers) if signers is not None else None
        if check is None or check.needs_git:
            out[sha] = git.verify_commit(sha)
        else:
            out[sha] = SignatureCheck(ok=check.ok, principal=check.principal, fingerprint=check.fingerprint,
                                      detail=check.detail)
    return out


def pack_issues(repo: Repo, commit: str, stack: Stack) -> list[Issue]:
    """Every pack present at ``commit`` verifies (id, signature, file hashes); the stack's packs exist and
    fold only active edits, no edit in two of them."""
    from cathrepo.repo.packs import SIGNATURES, check_pack
    from cathrepo.repo.written import Signed

    present = sorted({p.split("/")[1] for p in repo.git.list_tree(commit, layout.PACKS)
                      if p.endswith("/" + layout.PACK)})
    issues: list[Issue] = []
    seen: set[str] = set()
    signed = Signed(repo, commit, SIGNATURES) if present else None
    for pack_id in present:
        pack, problems = check_pack(repo, pack_id, commit, signed)
        issues += [Issue(*p.split(": ", 1)) for p in problems]
        if pack is None or pack_id not in stack.packs:
            continue
        for eid in pack.record.edits:
            if eid not in stack.active or eid in seen:
                issues.append(Issue(layout.STACK, f"pack {pack_id} folds edit {eid}, which is "
                                                  f"{'in another pack' if eid in seen else 'not active'}"))
            seen.add(eid)
    issues += [Issue(layout.STACK, f"names pack {p}, which does not exist") for p in stack.packs if p not in present]
    return issues


def verify(repo: Repo, rev: str = "HEAD", *, full: bool = False) -> VerifyReport:
    """Check every commit reachable from ``rev`` and every edit present at ``rev``. What this clone
    verified before (:mod:`cathrepo.repo.verified`) is not checked again, except each edit's weights;
    ``full`` checks everything."""
    verified = Verified.of(repo.root, full=full)
    commit = repo.git.rev_parse(rev)
    report = VerifyReport(rev=rev, commit=commit)
    shas = repo.git.rev_list(commit)
    report.commits = len(shas)
    file = repo.git.allowed_signers_file()
    key = signers_key(file.read_bytes() if file is not None and file.is_file() else None)
    todo = [sha for sha in shas if not verified.has_commit(sha, key)]
    for sha, check in commit_checks(repo.git, todo).items():
        if check.ok:
            verified.add_commit(sha, key)
        else:
            report.issues.append(Issue(f"commit {sha[:12]}", f"signature does not verify: {check.detail}"))
    stack = repo.stack(commit)
    listing = repo.git.list_tree(commit, layout.EDITS)
    present = sorted({path.split("/")[1] for path in listing if path.endswith("/" + layout.RECORD)})
    for missing in [e for e in stack.active if e not in present]:
        report.issues.append(Issue(layout.STACK, f"names edit {missing}, which does not exist"))
    checks = check_edits(repo, commit, present, worktree=commit == repo.git.head(), verified=verified, records=False,
                         listing=listing)
    for eid in present:
        report.edits += 1
        report.files += 1 + len(layout.EDIT_FILES)
        report.issues.extend(checks[eid].issues)
    report.approvals, issues = approval_issues(repo, commit, listing)
    report.issues.extend(issues)
    report.issues.extend(pack_issues(repo, commit, stack))
    report.proposals, issues = proposal_issues(repo, commit)
    report.issues.extend(issues)
    report.deployments, issues = log_issues(repo, commit, shas)
    report.issues.extend(issues)
    verified.save()
    return report
