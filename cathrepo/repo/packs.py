"""Packs: active edits folded into one delta (``cathrepo consolidate``, ``cathrepo merge --strategy``).

A pack is applied in place of the edits it folds; the edits stay active (their probes are still the
regression suite, ``revert`` still names them) and their files stay in the repository. ``cat`` folds
exactly (ranks add), ``svd:R``/``ties``/``dare`` approximately, always on each module's full ΔW
(:mod:`cathrepo.merging.consolidate`); ``clip``/``prune`` hold the summed ΔW at the base weight's
spectral norm, restraining a long stack of edits to one weight (:mod:`cathrepo.merging.restrain`). A
pack is gated like a merge before it is used: the model with the pack must keep every active edit's
probes, retention, perplexity and norms; one that fails is not written and the edits stay as they were.
Reverting an edit inside a pack folds the pack again from the edits that remain (:func:`refold`), so the
model equals the one built from those edits alone (exactly, for ``cat``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cathrepo.exceptions import CathrepoError, GateFailedError, InvalidInputError, VerificationError
from cathrepo.repo import layout
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.config import RepoConfig
    from cathrepo.delta import Delta
    from cathrepo.gates.results import GateReport
    from cathrepo.provenance.pack import PackRecord
    from cathrepo.repo import Repo
    from cathrepo.repo.layout import Stack
    from cathrepo.repo.state import ActiveEdit
    from cathrepo.repo.written import Signed


#: Every pack signature, as a git pathspec.
SIGNATURES = f"{layout.PACKS}/*/{layout.PACK_SIGNATURE}"


@dataclass(frozen=True)
class Pack:
    """A verified pack: its id, record and delta."""

    id: str
    record: PackRecord
    delta: Delta


@dataclass(frozen=True)
class ConsolidateOutcome:
    pack: Pack
    commit: str
    report: GateReport | None


def check_pack(repo: Repo, pack_id: str, rev: str, signed: Signed | None = None) -> tuple[Pack | None, list[str]]:
    """Read and verify one pack at ``rev`` (its id, ``pack.sig`` by a signer valid when the record was
    created and not revoked in the commit that wrote it, every file's sha256, the weights through their
    DVC pointer): the pack, or None and what is wrong. ``signed``: when each ``pack.sig`` at ``rev`` was
    written, when the caller has it (:data:`SIGNATURES`)."""
    from cathrepo.delta import delta_from_parts
    from cathrepo.files import sha256_bytes
    from cathrepo.provenance.manifest import edit_id
    from cathrepo.provenance.pack import PackRecord
    from cathrepo.provenance.signing import verify_payload
    from cathrepo.repo.state import signers_at
    from cathrepo.repo.written import Signed

    path = layout.pack_path(pack_id, layout.PACK)
    raw = repo.git.show_file(rev, path)
    if raw is None:
        return None, [f"{path}: missing at {rev}"]
    issues = [] if edit_id(raw) == pack_id else [f"{path}: hashes to {edit_id(raw)}, not to its id (modified)"]
    sig_path = layout.pack_path(pack_id, layout.PACK_SIGNATURE)
    try:
        sig = repo.git.show_file(rev, sig_path)
        if sig is None:
            raise VerificationError("missing")
        signed = signed or Signed(repo, rev, sig_path)
        verify_payload(json.loads(sig), raw, signers_at(repo, rev), what=sig_path, at=signed.at(sig_path, raw),
                       then=signed.then(sig_path))
        record = PackRecord.from_bytes(raw, what=path)
        files = {layout.ADAPTER_CONFIG: repo.git.show_file(rev, layout.pack_path(pack_id, layout.ADAPTER_CONFIG)),
                 layout.WEIGHTS: _weights(repo, rev, pack_id)}
    except (CathrepoError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [*issues, f"{sig_path}: {getattr(exc, 'message', exc)}"]
    for name, expected in sorted(record.files.items()):
        data = files.get(name)
        if data is None or sha256_bytes(data) != expected:
            issues.append(f"{layout.pack_path(pack_id, name)}: {'missing' if data is None else 'sha256 differs'}")
    if issues:
        return None, issues
    config, weights = files[layout.ADAPTER_CONFIG], files[layout.WEIGHTS]
    assert config is not None and weights is not None
    delta = delta_from_parts(json.loads(config), weights, what=f"pack {pack_id}")
    return Pack(pack_id, record, delta), []


def _weights(repo: Repo, rev: str, pack_id: str) -> bytes:
    pointer = repo.git.show_file(rev, layout.pack_path(pack_id, layout.WEIGHTS_POINTER))
    if pointer is None:
        raise VerificationError(f"{layout.pack_path(pack_id, layout.WEIGHTS_POINTER)} is missing at {rev}.")
    md5, _, _ = repo.storage.read_pointer(pointer)
    return repo.storage.fetch_object(md5).read_bytes()


def load_packs(repo: Repo, rev: str, stack: Stack | None = None) -> list[Pack]:
    """The packs of ``rev``'s stack, verified; raises naming the first that does not verify."""
    from cathrepo.repo.written import Signed

    stack = stack or repo.stack(rev)
    signed = Signed(repo, rev, SIGNATURES) if stack.packs else None
    out = []
    for pack_id in stack.packs:
        pack, issues = check_pack(repo, pack_id, rev, signed)
        if pack is None:
            raise VerificationError(f"Pack {pack_id} does not verify: {issues[0]}.",
                                    hint="Run 'cathrepo verify' for the full list.")
        out.append(pack)
    return out


def applied_deltas(edits: Sequence[ActiveEdit], packs: Sequence[Pack]) -> list[Delta]:
    """What is applied for a set of edits: each pack whose edits are all in the set in place of the edits
    it folds, then the edits no such pack holds, in stack order. A pack only some of whose edits are in
    the set (a tenant's share of the active set) is not used: those edits apply one by one."""
    ids = {e.id for e in edits}
    used = [p for p in packs if set(p.record.edits) <= ids]
    folded = {e for p in used for e in p.record.edits}
    return [*(p.delta for p in used), *(e.delta for e in edits if e.id not in folded)]


def applied_at(repo: Repo, rev: str, edits: Sequence[ActiveEdit]) -> list[Delta]:
    """:func:`applied_deltas` of ``rev``'s active ``edits`` and its packs (before any restraint)."""
    stack = repo.stack(rev)
    return applied_deltas(edits, load_packs(repo, rev, stack)) if stack.packs else [e.delta for e in edits]


def stack_deltas(repo: Repo, rev: str, edits: Sequence[ActiveEdit]) -> list[Delta]:
    """What the model carries at ``rev`` for its active ``edits``: :func:`applied_at`, :func:`carried`
    under ``rev``'s ``[stack]``."""
    deltas = applied_at(repo, rev, edits)
    return carried(repo, deltas, repo.config_at(rev)) if deltas else deltas


def labelled(repo: Repo, deltas: Sequence[Delta]) -> list[Delta]:
    """``deltas`` named for the repository's base by its hub id: edits committed before adapters named
    the hub id name a local path, and consolidation refuses deltas that name different bases."""
    from dataclasses import replace

    from cathrepo.models import resolve_model

    name = resolve_model(repo.config.base.source).hub_id
    return [replace(d, base_model=name) for d in deltas]


def fold(repo: Repo, edits: Sequence[ActiveEdit], strategy: str) -> tuple[PackRecord, Delta]:
    """The pack of ``edits`` by ``strategy`` (its record without gates or files yet) and its delta."""
    from cathrepo.merging.consolidate import consolidate as combine
    from cathrepo.merging.strategies import get_strategy
    from cathrepo.provenance.pack import PackRecord

    if len(edits) < 2:
        raise InvalidInputError(f"A pack folds two edits or more; {len(edits)} active.", hint="Nothing to fold.")
    deltas = labelled(repo, [e.delta for e in edits])
    norms = base_norms(repo, {m for d in deltas for m in d.modules}) if get_strategy(strategy).needs_norms else None
    done = combine(deltas, strategy, norms=norms)
    base = repo.config.base
    record = PackRecord(edits=tuple(e.id for e in edits), strategy=done.strategy, ranks=dict(done.ranks),
                        errors={k: float(v) for k, v in done.errors.items()},
                        base_model={"name": base.name, "sha256": base.sha256}, files={},
                        author=repo.git.config_get("user.name") or "unknown",
                        created=datetime.now(UTC).isoformat(timespec="seconds"))
    return record, done.delta


def base_norms(repo: Repo, modules: Iterable[str]) -> dict[str, float]:
    """module -> the spectral norm of its weight in the repository's verified base model (what ``clip`` and
    ``prune`` packs and a restrained stack are bounded by). Cached per base model (by its sha256) in the
    user's cache; a module not there yet loads the base model once (a few seconds)."""
    import json

    from cathrepo.files import atomic_write
    from cathrepo.merging.restrain import spectral_norm
    from cathrepo.models import cache_dir, get_module

    wanted = sorted(set(modules))
    path = cache_dir() / "norms" / f"{repo.config.base.sha256}.json"
    try:
        known = {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        known = {}
    if any(m not in known for m in wanted):
        model, _tokenizer = repo.load_base()
        known.update({m: spectral_norm(get_module(model, m).weight) for m in wanted if m not in known})
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(known, sort_keys=True).encode())
    return {m: known[m] for m in wanted}


def carried(repo: Repo, deltas: Sequence[Delta], config: RepoConfig | None = None) -> list[Delta]:
    """What the model carries for ``deltas`` (the applied stack, in order) under ``config``'s ``[stack]``
    (default: the work tree's): the deltas as they are, or, with ``restrain``, their sum restrained at
    ``restrain_factor`` times each base weight's spectral norm as one delta. A function of the deltas
    alone, so a revert or a checkout gives the model back exactly."""
    from cathrepo.merging.consolidate import consolidate as combine

    stack = (config or repo.config).stack
    if not stack.restrain or not deltas:
        return list(deltas)
    norms = base_norms(repo, {m for d in deltas for m in d.modules})
    # the clip/prune merge strategy: the deltas summed and restrained in one pass
    return [combine(labelled(repo, deltas), f"{stack.restrain}:{stack.restrain_factor}", norms=norms).delta]


def write_pack(repo: Repo, record: PackRecord, delta: Delta) -> tuple[Pack, list[str]]:
    """Write ``packs/<id>/`` (adapter files, weights to DVC, signed record) and stage it; returns the pack
    and the staged paths. On failure nothing of it is left."""
    from cathrepo.delta import save_delta
    from cathrepo.files import sha256_bytes
    from cathrepo.models import family_for
    from cathrepo.provenance.signing import sign_payload, write_envelope

    staging = Path(repo.root / layout.PACKS / f".staging-{record.created.replace(':', '')}")
    target: Path | None = None
    try:
        save_delta(delta, staging / layout.DELTA_DIR, fan_in_fan_out=family_for(repo.config.base.family).conv1d)
        files = {name: sha256_bytes((staging / name).read_bytes()) for name in layout.PACK_FILES}
        record = dataclasses.replace(record, files=files)
        raw = record.to_bytes()
        (staging / layout.PACK).write_bytes(raw)
        write_envelope(staging / layout.PACK_SIGNATURE, sign_payload(repo.signing_key(), raw))
        target = repo.root / layout.pack_path(record.id)
        if target.exists():
            raise CathrepoError(f"Pack {record.id} already exists.", hint="Nothing to do.")
        staging.rename(target)
        stored = repo.storage.add(target / layout.WEIGHTS)
        staged = [layout.pack_path(record.id, n) for n in (layout.PACK, layout.PACK_SIGNATURE, layout.ADAPTER_CONFIG)]
        staged += [str(p.relative_to(repo.root)) for p in stored.git_files]
        repo.git.add(staged)
    except BaseException:
        for path in (staging, target):
            if path is not None and path.exists():
                shutil.rmtree(path, ignore_errors=True)
        raise
    return Pack(record.id, record, delta), staged


def refold(repo: Repo, packs: Sequence[Pack], remaining: Sequence[ActiveEdit],
           removed: str) -> tuple[list[Pack], list[tuple[PackRecord, Delta]]]:
    """The packs after edit ``removed`` leaves the active set: those without it kept as they are, each
    that held it folded again from its other edits by the same strategy (dropped when one is left, which
    then applies by itself). Returns (kept packs, new packs to write)."""
    kept = [p for p in packs if removed not in p.record.edits]
    fresh = []
    for pack in packs:
        if removed in pack.record.edits:
            members = [e for e in remaining if e.id in pack.record.edits]
            if len(members) >= 2:
                fresh.append(fold(repo, members, pack.record.strategy))
    return kept, fresh


def gate_fold(repo: Repo, before: Sequence[Delta], after: Sequence[Delta], edit_ids: Sequence[str],
              progress: Callable[[str], None] | None = None) -> GateReport:
    """The merge-stage gates on replacing ``before`` by ``after`` with every active edit's probes as the
    regression suite (no edit is new, so the efficacy family has nothing to measure)."""
    from cathrepo.gates.base import run_gates
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.repo.state import probe_sets

    model, tokenizer = repo.load_base()
    config = repo.config
    return run_gates(model, tokenizer, before=carried(repo, before), after=carried(repo, after),
                     suite=probe_sets(repo, list(edit_ids)), policy=GatePolicy.from_dict(config.gates),
                     stage="merge", base_hash=config.base.sha256, root=repo.root, progress=progress)


@locked("consolidate")
def consolidate(repo: Repo, *, strategy: str = "cat", gate: bool = True, force: bool = False,
                progress: Callable[[str], None] | None = None) -> ConsolidateOutcome:
    """Fold every active edit into one pack (replacing the packs there were), gate it, commit it signed."""
    from cathrepo.repo.state import active_edits
    from cathrepo.repo.verified import Verified

    edits = active_edits(repo, "HEAD", verified=Verified.of(repo.root))
    stack = repo.stack("HEAD")
    before = applied_deltas(edits, load_packs(repo, "HEAD", stack))
    record, delta = fold(repo, edits, strategy)
    report = None
    if gate:
        report = gate_fold(repo, before, [delta], [e.id for e in edits], progress)
        if not report.passed and not force:
            raise GateFailedError.from_report(report, f"The {record.strategy} pack of {len(edits)} edits",
                                              hint="The edits stay as they are; try 'cat' (exact) or a higher rank.")
    return ConsolidateOutcome(*_commit_pack(repo, stack, record, delta, report,
                                            f"Consolidate {len(edits)} edits ({record.strategy})"))


def _commit_pack(repo: Repo, stack: Stack, record: PackRecord, delta: Delta, report: GateReport | None,
                 subject: str, extra: Mapping[str, str] | None = None) -> tuple[Pack, str, GateReport | None]:
    """Write the pack, point ``stack.json`` at it alone, one signed commit; all or nothing."""
    stack_path = repo.root / layout.STACK
    saved = stack_path.read_bytes()
    staged: list[str] = []
    written: Pack | None = None
    if report is not None:  # the record keeps the gates the pack passed (or was forced past)
        record = dataclasses.replace(record, gates=report.to_dict())
    try:
        written, staged = write_pack(repo, record, delta)
        pack = written
        stack_path.write_bytes(stack.with_packs((pack.id,)).to_bytes())
        repo.git.add([layout.STACK])
        trailers = {"Cathrepo-Action": "consolidate", "Cathrepo-Pack": pack.id, "Cathrepo-Strategy": record.strategy,
                    **(extra or {})}
        if report is not None:
            trailers.update(report.trailers(per_gate=False, forced=not report.passed))
        sha = repo.git.commit(f"{subject}: pack {pack.id}", trailers, sign_with=repo.signing_key())
    except BaseException:
        stack_path.write_bytes(saved)
        repo.git.unstage([*staged, layout.STACK])
        if written is not None:
            shutil.rmtree(repo.root / layout.pack_path(written.id), ignore_errors=True)
        raise
    return pack, sha, report
