"""``cathrepo propose``: commit facts as signed proposals, without weights, for review in a pull request.

A proposal directory holds the fact(s) and their provenance (``proposal.json``), the probes the edit
will be tested with, synthesized from the fact and the shipped known facts without the model
(``probes.jsonl``: the rewrite prompt, paraphrases, candidate neighbours, generation prompts), and a
signature over the record (``proposal.sig``). ``cathrepo ci`` realises it: the probes the edit is gated
with are built again on the model as it then is (neighbours kept only where the model gives their
answer), and are committed with the edit. All proposals of one call are one signed commit; if any step
fails, nothing of them stays.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import CathrepoError, InvalidInputError
from cathrepo.repo import layout
from cathrepo.repo.lock import locked

PROPOSAL_TRAILER = "Cathrepo-Proposal"  # on the commit of an edit: the proposal it realises
PROPOSALS_TRAILER = "Cathrepo-Proposals"  # on a proposing commit: the proposals it adds, in order

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cathrepo.facts.schema import EditRequest
    from cathrepo.provenance.proposal import ProposalRecord
    from cathrepo.repo import Repo
    from cathrepo.repo.state import Issue
    from cathrepo.repo.written import Signed


@dataclass(frozen=True)
class Proposed:
    """The proposals one call committed and the commit holding them."""

    ids: tuple[str, ...]
    records: tuple[ProposalRecord, ...]
    commit: str


def proposal_record(repo: Repo, request: EditRequest, *, method: str | None, params: Mapping[str, Any],
                    probes_sha256: str) -> ProposalRecord:
    """The record of one request (its facts and provenance) as a proposal."""
    from cathrepo.provenance.proposal import ProposalRecord

    base = repo.config.base
    return ProposalRecord(
        facts=tuple(f.to_dict() for f in request.facts),
        source=request.source,
        author=request.author or repo.git.config_get("user.name") or "unknown",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        confidence=float(request.confidence),
        risk=request.risk,
        base_model={"name": base.name, "sha256": base.sha256},
        files={layout.PROBES: probes_sha256},
        method=method,
        params=dict(params),
        passage=dict(request.passage) if request.passage else None,
        topics=tuple(request.topics),
    )


def _probes_text(request: EditRequest) -> str:
    """The probes a reviewer reads: built from the facts without the model (see the module docstring)."""
    from cathrepo.facts.probes import build_probes
    from cathrepo.pipeline import merge_probe_sets

    merged = merge_probe_sets([build_probes(fact) for fact in request.facts])
    assert merged is not None
    return merged.to_jsonl()


def _refuse_duplicates(repo: Repo, requests: Sequence[EditRequest]) -> None:
    """The same facts proposed twice (on this branch, or twice in one call) are a mistake: refuse it."""
    from cathrepo.provenance.proposal import ProposalRecord

    def key(facts: Sequence[Mapping[str, Any]]) -> str:
        return "\x1e".join(f"{f.get('prompt')}\x1f{f.get('subject')}\x1f{f.get('target_new')}" for f in facts)

    seen: dict[str, str] = {}
    if repo.git.head() is not None:
        listing = repo.git.list_tree("HEAD", layout.PROPOSALS)
        oids = {p.split("/")[1]: oid for p, (kind, oid) in listing.items() if p.endswith("/" + layout.PROPOSAL)}
        data = repo.git.read_objects(list(oids.values()))
        for pid, oid in oids.items():
            try:
                seen[key(ProposalRecord.from_bytes(data[oid]).facts)] = pid
            except CathrepoError:
                continue  # a damaged proposal is for verify and ci to report
    for request in requests:
        k = key([f.to_dict() for f in request.facts])
        if k in seen:
            raise InvalidInputError(f"'{request.fact.prompt} -> {request.fact.target_new}' is already proposed "
                                    f"({seen[k] or 'twice in this call'}).",
                                    hint="Nothing is committed; drop the duplicate and propose the rest.")
        seen[k] = ""


@locked("propose")
def propose(repo: Repo, requests: Sequence[EditRequest], *, method: str | None = None,
            params: Mapping[str, Any] | None = None, message: str | None = None) -> Proposed:
    """Write one proposal per request and commit them all in one signed commit."""
    from cathrepo.edits.base import get_method
    from cathrepo.files import sha256_bytes
    from cathrepo.provenance.signing import sign_payload, write_envelope

    if not requests:
        raise InvalidInputError("No facts to propose.", hint="Pass --prompt/--subject/--target or --file.")
    if method is not None:
        get_method(method)  # an unknown method is refused now, not in CI
    key = repo.signing_key()
    _refuse_duplicates(repo, requests)
    written: list[str] = []
    records: list[ProposalRecord] = []
    try:
        for request in requests:
            probes = _probes_text(request).encode("utf-8")
            record = proposal_record(repo, request, method=method, params=params or {},
                                     probes_sha256=sha256_bytes(probes))
            directory = repo.root / layout.proposal_path(record.id)
            directory.mkdir(parents=True)
            written.append(layout.proposal_path(record.id))
            raw = record.to_bytes()
            (directory / layout.PROPOSAL).write_bytes(raw)
            (directory / layout.PROBES).write_bytes(probes)
            write_envelope(directory / layout.PROPOSAL_SIGNATURE, sign_payload(key, raw))
            records.append(record)
        repo.git.add(written)
        subject = f"Propose {records[0].summary}" if len(records) == 1 else f"Propose {len(records)} facts"
        body = message or "\n".join(f"{r.id}: {r.summary} (risk {r.risk}; source {r.source or '-'})" for r in records)
        trailers = {"Cathrepo-Action": "propose", PROPOSALS_TRAILER: " ".join(r.id for r in records)}
        sha = repo.git.commit(f"{subject}\n\n{body}", trailers, sign_with=key)
    except BaseException:
        if written:
            repo.git.unstage(written)
        for path in written:
            shutil.rmtree(repo.root / path, ignore_errors=True)
        raise
    return Proposed(tuple(r.id for r in records), tuple(records), sha)


# --- reading proposals back (cathrepo ci) -------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    """A proposal present at a revision: its record (None when it does not verify) and what is wrong."""

    id: str
    record: ProposalRecord | None
    issues: tuple[str, ...] = ()


def _history(repo: Repo, rev: str) -> tuple[list[str], set[str]]:
    """The proposals in the order their commits proposed them (``Cathrepo-Proposals``), and those an edit
    reachable from ``rev`` realised (``Cathrepo-Proposal`` of the signed commit that added the edit; a
    later revert does not make the proposal pending again)."""
    commits = repo.git.log(rev, trailer_keys=[PROPOSALS_TRAILER, PROPOSAL_TRAILER])
    order = [pid for c in reversed(commits) for pid in c.trailers.get(PROPOSALS_TRAILER, "").split()]
    return order, {c.trailers[PROPOSAL_TRAILER] for c in commits if c.trailers.get(PROPOSAL_TRAILER)}


def pending_proposals(repo: Repo, rev: str = "HEAD") -> list[Pending]:
    """Every proposal at ``rev`` that no edit realised yet, in the order they were proposed (any not named
    by a proposing commit last), each verified (id, signature, probes hash)."""
    sha = repo.git.rev_parse(rev)
    listing = repo.git.list_tree(sha, layout.PROPOSALS)
    ids = {p.split("/")[1] for p in listing if p.endswith("/" + layout.PROPOSAL)}
    if not ids:
        return []
    order, done = _history(repo, sha)
    rank = {pid: i for i, pid in reversed(list(enumerate(order)))}
    todo = sorted((pid for pid in ids if pid not in done), key=lambda pid: (rank.get(pid, len(order)), pid))
    if not todo:
        return []
    return check_proposals(repo, sha, listing, todo)


def proposal_issues(repo: Repo, sha: str) -> tuple[int, list[Issue]]:
    """``verify``'s check of every proposal at ``sha``, realised or not: how many there are, and what does
    not hold (its id, ``proposal.sig``, the hash of its probes)."""
    from cathrepo.repo.state import Issue

    listing = repo.git.list_tree(sha, layout.PROPOSALS)
    ids = sorted({p.split("/")[1] for p in listing if p.endswith("/" + layout.PROPOSAL)})
    if not ids:
        return 0, []
    checked = check_proposals(repo, sha, listing, ids)
    return len(ids), [Issue(*problem.split(": ", 1)) for pending in checked for problem in pending.issues]


def check_proposals(repo: Repo, sha: str, listing: Mapping[str, tuple[str, str]], ids: Sequence[str]) -> list[Pending]:
    """Each proposal of ``ids`` at ``sha`` (``listing``: its tree below ``proposals/``) verified, its files read in one ``cat-file``; each signature
    checked at the time its record was created and against the commit that wrote it
    (:mod:`cathrepo.repo.written`)."""
    from cathrepo.repo.state import signers_at
    from cathrepo.repo.written import Signed

    chosen = set(ids)
    wanted = {path: oid for path, (kind, oid) in listing.items() if kind == "blob" and path.split("/")[1] in chosen}
    data = repo.git.read_objects(list(wanted.values()))
    files = {path: data[oid] for path, oid in wanted.items()}
    signers = signers_at(repo, sha)
    signed = Signed(repo, sha, f"{layout.PROPOSALS}/*/{layout.PROPOSAL_SIGNATURE}")
    return [_check_proposal(pid, files, signers, signed) for pid in ids]


def _check_proposal(pid: str, files: Mapping[str, bytes], signers: Any, signed: Signed) -> Pending:
    import json

    from cathrepo.exceptions import VerificationError
    from cathrepo.files import sha256_bytes
    from cathrepo.provenance.manifest import edit_id
    from cathrepo.provenance.proposal import ProposalRecord
    from cathrepo.provenance.signing import verify_payload

    path = layout.proposal_path(pid, layout.PROPOSAL)
    raw = files[path]
    issues = [] if edit_id(raw) == pid else [f"{path}: hashes to {edit_id(raw)}, not to its id (modified)"]
    sig_path = layout.proposal_path(pid, layout.PROPOSAL_SIGNATURE)
    try:
        if sig_path not in files:
            raise VerificationError("missing")
        verify_payload(json.loads(files[sig_path]), raw, signers, what=sig_path, at=signed.at(sig_path, raw),
                       then=signed.then(sig_path))
        record = ProposalRecord.from_bytes(raw, what=path)
    except (VerificationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Pending(pid, None, (*issues, f"{sig_path}: {getattr(exc, 'message', exc)}"))
    for name, expected in sorted(record.files.items()):
        data = files.get(layout.proposal_path(pid, name))
        if data is None or sha256_bytes(data) != expected:
            issues.append(f"{layout.proposal_path(pid, name)}: {'missing' if data is None else 'sha256 differs from the record'}")
    return Pending(pid, None if issues else record, tuple(issues))


def request_of(record: ProposalRecord) -> EditRequest:
    """The edit request a proposal asks for (its facts and provenance)."""
    from cathrepo.facts.schema import EditRequest, Fact

    facts = [Fact.from_dict(f) for f in record.facts]
    return EditRequest(facts[0], source=record.source, author=record.author, confidence=record.confidence,
                       risk=record.risk, more=tuple(facts[1:]), passage=record.passage, topics=record.topics)
