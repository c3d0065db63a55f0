"""Record a gated edit: write ``edits/<id>/``, hand the weights to DVC, sign, and make a signed commit.

All-or-nothing (STYLE.md §2): the edit directory is assembled under a temporary name and renamed into
place, and if anything after that fails — DVC, signing, git, an interrupt — the directory, the index
entries and ``stack.json`` are put back as they were. It runs under the repository lock (``@locked``, re-entrant
from ``edit``) and signs the record and the commit with the same key, passed to each call.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import CathrepoError
from cathrepo.files import sha256_bytes
from cathrepo.repo import layout
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.edits.base import EditResult
    from cathrepo.facts.schema import EditRequest
    from cathrepo.gates.results import GateReport
    from cathrepo.provenance.keys import SigningKey
    from cathrepo.provenance.manifest import EditRecord
    from cathrepo.repo import Repo


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def build_edit_files(
    repo: Repo,
    request: EditRequest,
    result: EditResult,
    *,
    method: str,
    params: Mapping[str, Any],
    computed_on: Sequence[str],
    staging: Path,
    numerics: Mapping[str, Any] | None = None,
    proposal: str | None = None,
) -> EditRecord:
    """Write the edit's files into ``staging`` and return its record (whose files map holds their hashes)."""
    from cathrepo.delta import save_delta
    from cathrepo.files import sha256_bytes
    from cathrepo.models import family_for, resolve_model
    from cathrepo.provenance.manifest import EditRecord, library_versions, stack_summary

    config = repo.config
    # The adapter names its base as PEFT users do (the hub id, not this machine's cache path); edit.json
    # keeps the sha256 (and the hub revision, when known) that say which weights exactly.
    base = resolve_model(config.base.source)
    delta = dataclasses.replace(result.delta, base_model=base.hub_id)
    save_delta(delta, staging / layout.DELTA_DIR, fan_in_fan_out=family_for(config.base.family).conv1d)
    assert result.probes is not None, "an edit is committed only after the pipeline probed and gated it"
    (staging / layout.PROBES).write_text(result.probes.to_jsonl(), encoding="utf-8")
    (staging / layout.DATA).write_bytes(_jsonl(list(result.data)))
    files = {name: sha256_bytes((staging / name).read_bytes()) for name in layout.EDIT_FILES}
    fact = result.fact
    return EditRecord(
        action=fact.action,
        fact=fact.to_dict(),
        facts=tuple(f.to_dict() for f in result.facts) if len(result.facts) > 1 else (),
        passage=dict(request.passage) if request.passage else None,
        method=method,
        params=dict(params),
        site=dict(result.site),
        source=request.source,
        author=request.author or repo.git.config_get("user.name") or "unknown",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        confidence=float(request.confidence),
        risk=request.risk,
        base_model={"name": config.base.name, "sha256": config.base.sha256, "hub_id": base.hub_id,
                    **({"revision": base.revision} if base.revision else {})},
        files=files,
        gates=result.gates.to_dict(),
        info={**dict(result.info), "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
              **({"numerics": dict(numerics)} if numerics else {})},
        attribution=dict(result.attribution) if result.attribution else None,
        stack_before=stack_summary(tuple(computed_on), config.stack.restrain, config.stack.restrain_factor),
        versions=library_versions(),
        proposal=proposal,
        topics=tuple(request.topics),
    )


def edit_trailers(record: EditRecord, edit_id: str, report: GateReport) -> dict[str, str]:
    """Commit trailers: the edit, its method, the hash of each file, then the report's own trailers."""
    return {
        "Cathrepo-Action": record.action,  # "edit" or "forget"
        "Cathrepo-Edit": edit_id,
        "Cathrepo-Method": record.method,
        "Cathrepo-Record-Sha256": sha256_bytes(record.to_bytes()),
        "Cathrepo-Delta-Sha256": record.files[layout.WEIGHTS],
        "Cathrepo-Probes-Sha256": record.files[layout.PROBES],
        "Cathrepo-Data-Sha256": record.files[layout.DATA],
        "Cathrepo-Risk": record.risk,
        **report.trailers(),
    }


@locked("commit")
def commit_edit(
    repo: Repo,
    request: EditRequest,
    result: EditResult,
    *,
    method: str,
    params: Mapping[str, Any],
    numerics: Mapping[str, Any] | None = None,
    key: SigningKey | None = None,
    proposal: str | None = None,
    trailers: Mapping[str, str] | None = None,
) -> EditResult:
    """Store and commit one gated edit; returns (edit id, commit sha, record).

    Args:
        key: the key that signs the record and the commit (default: the repository's, ``user.signingkey``);
            ``cathrepo ci --commit`` passes the CI key.
        proposal: the id of the proposal this edit realises.
        trailers: more commit trailers (``Cathrepo-Carries``: the edit a rebase carried to a new base).
    """
    from cathrepo.provenance.signing import sign_payload, write_envelope

    stack = repo.stack("WORKTREE")
    edits_dir = repo.root / layout.EDITS
    edits_dir.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=edits_dir))
    target: Path | None = None
    stack_path = repo.root / layout.STACK
    stack_before = stack_path.read_bytes() if stack_path.exists() else None
    staged: list[str] = []
    try:
        # 1. The files, assembled off to the side; the record names each file's hash.
        record = build_edit_files(repo, request, result, method=method, params=params,
                                  computed_on=stack.active, staging=staging, numerics=numerics, proposal=proposal)
        raw = record.to_bytes()
        edit_id = record.id
        (staging / layout.RECORD).write_bytes(raw)
        # 2. Sign the record (which holds every other file's hash).
        key = key or repo.signing_key()
        write_envelope(staging / layout.SIGNATURE, sign_payload(key, raw))
        final = edits_dir / edit_id
        if final.exists():
            raise CathrepoError(f"Edit {edit_id} already exists.", hint="Nothing to do.")
        staging.rename(final)
        target = final
        # 3. Weights to DVC: git keeps only the pointer.
        stored = repo.storage.add(target / layout.WEIGHTS)
        # 4. The active set grows by one, then one signed commit holds it all.
        stack_path.write_bytes(stack.with_edit(edit_id).to_bytes())
        staged = [
            layout.edit_path(edit_id, name)
            for name in (layout.RECORD, layout.SIGNATURE, layout.ADAPTER_CONFIG, layout.PROBES, layout.DATA)
        ]
        staged += [str(p.relative_to(repo.root)) for p in stored.git_files] + [layout.STACK]
        repo.git.add(staged)
        fact = result.fact
        subject = f"Edit {edit_id}: {record.summary}"
        body = f"Method {method}; was: {fact.target_true or '?'}; risk {record.risk}; source {record.source or '-'}."
        from cathrepo.repo.propose import PROPOSAL_TRAILER

        all_trailers = {**edit_trailers(record, edit_id, result.gates), **(trailers or {})}
        if proposal is not None:
            all_trailers[PROPOSAL_TRAILER] = proposal
        sha = repo.git.commit(f"{subject}\n\n{body}", all_trailers, sign_with=key)
    except BaseException:
        if staged:
            repo.git.unstage(staged)
        if stack_before is not None:
            stack_path.write_bytes(stack_before)
        for path in (staging, target):
            if path is not None and path.exists():
                shutil.rmtree(path, ignore_errors=True)
        raise
    return dataclasses.replace(result, edit_id=edit_id, commit=sha, record=record)
