"""Export a revision's active set for other engines (stage ⑧ of DESIGN.md §2): ``cathrepo export``.

``peft`` writes one PEFT LoRA adapter directory: the deltas applied at the revision (packs in place of
the edits they fold, as :func:`~cathrepo.repo.materialize.materialize` applies them) consolidated by
``cat``, which is exact (ranks add; each module's rank and alpha through ``rank_pattern``/``alpha_pattern``),
or by ``svd:R`` when a rank limit is asked for (vLLM's ``max_lora_rank``), with its truncation error
reported. ``merged`` writes a plain Hugging Face model directory with the deltas merged into the weights.
Both carry ``cathrepo-export.json``: the revision, commit, edits, base model and strategy.

Everything is read verified. The directory is assembled under a temporary name beside ``out`` and renamed
into place, so a failure leaves nothing half-written; an existing non-empty ``out`` is replaced only when
forced.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import InvalidInputError

if TYPE_CHECKING:
    from cathrepo.repo import Repo

FORMATS = ("peft", "merged")
MANIFEST = "cathrepo-export.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Exported:
    """What :func:`export` wrote.

    Attributes:
        out: the directory written.
        format: ``peft`` or ``merged``.
        rev, commit: the revision asked for and the commit it named.
        edits: the active edits, in stack order; packs: the packs applied in place of some of them.
        base_model: ``name``, ``hub_id`` and ``sha256`` of the base model.
        strategy: how the deltas were combined (``cat``, ``svd:R``; ``merged`` for merged weights).
        ranks: module -> rank of the adapter (``peft`` only).
        errors: module -> relative truncation error ``‖ΔW − B A‖_F / ‖ΔW‖_F`` (0 for ``cat``).
    """

    out: Path
    format: str
    rev: str
    commit: str
    edits: tuple[str, ...]
    packs: tuple[str, ...]
    base_model: Mapping[str, str]
    strategy: str
    ranks: Mapping[str, int] = field(default_factory=dict)
    errors: Mapping[str, float] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """The largest module rank (what an engine's rank limit is compared with)."""
        return max(self.ranks.values(), default=0)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def manifest(self) -> dict[str, Any]:
        """``cathrepo-export.json``: everything but the output path (the directory may move)."""
        return {"schema_version": SCHEMA_VERSION, "format": self.format, "revision": self.rev,
                "commit": self.commit, "edits": list(self.edits), "packs": list(self.packs),
                "base_model": dict(self.base_model), "strategy": self.strategy, "ranks": dict(self.ranks),
                "errors": dict(self.errors), "max_error": self.max_error}


def export(repo: Repo, out: Path | str, *, fmt: str = "peft", rev: str = "HEAD", rank: int | None = None,
           force: bool = False) -> Exported:
    """Write ``rev``'s active set to ``out`` as a PEFT adapter or a merged model.

    Raises:
        InvalidInputError: an unknown format, ``rank`` with ``merged`` or below 1, an existing non-empty
            ``out`` without ``force``, or (``peft``) a revision with no active edit: an adapter that
            changes nothing has no rank to write (``merged`` writes the base model itself).
        VerificationError: an edit or pack that does not verify (nothing is written).
    """
    from cathrepo.models import resolve_model

    # 1. Check the request before reading anything.
    target = _check_request(Path(out), fmt, rank, force)
    # 2. The commit, its verified active edits and packs, and the base's names.
    commit = repo.git.rev_parse(rev)
    base = repo.config_at(commit).base
    hub_id = resolve_model(base.source).hub_id
    info = {"out": target, "format": fmt, "rev": rev, "commit": commit,
            "base_model": {"name": base.name, "hub_id": hub_id, "sha256": base.sha256}}
    # 3. Assemble beside the target, then rename into place.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".export", dir=target.parent))
    try:
        writer = _write_peft if fmt == "peft" else _write_merged
        done = writer(repo, staging, commit, rank, info)
        (staging / MANIFEST).write_text(json.dumps(done.manifest(), indent=2, sort_keys=True) + "\n")
        _put_in_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return done


def _check_request(out: Path, fmt: str, rank: int | None, force: bool) -> Path:
    if fmt not in FORMATS:
        raise InvalidInputError(f"Unknown export format '{fmt}'.", hint=f"Formats: {', '.join(FORMATS)}.")
    if rank is not None and (fmt != "peft" or rank < 1):
        raise InvalidInputError(f"--rank {rank} applies only to a PEFT adapter, as a positive rank.",
                                hint="Leave --rank out for a merged model.")
    target = out.expanduser().resolve()
    if target.exists() and not force and (not target.is_dir() or any(target.iterdir())):
        raise InvalidInputError(f"'{out}' already exists and is not empty.",
                                hint="Choose another directory, or pass --force to replace it.")
    return target


def _write_peft(repo: Repo, staging: Path, commit: str, rank: int | None, info: dict[str, Any]) -> Exported:
    """The adapter files of the deltas applied at ``commit``, combined by ``cat`` or ``svd:rank``."""
    from cathrepo.delta import save_delta
    from cathrepo.merging.consolidate import consolidate
    from cathrepo.models import family_for
    from cathrepo.repo.packs import labelled, stack_deltas
    from cathrepo.repo.state import active_edits
    from cathrepo.repo.verified import Verified

    edits = active_edits(repo, commit, verify=True, verified=Verified.of(repo.root))
    if not edits:
        raise InvalidInputError(f"{info['rev']} has no active edit: there is no adapter to export.",
                                hint="'cathrepo export --format merged' writes the base model itself.")
    deltas = labelled(repo, stack_deltas(repo, commit, edits))
    done = consolidate(deltas, "cat" if rank is None else f"svd:{rank}")
    family = family_for(repo.config_at(commit).base.family)
    save_delta(done.delta, staging, fan_in_fan_out=family.conv1d)
    return Exported(**info, edits=tuple(e.id for e in edits), packs=repo.stack(commit).packs,
                    strategy=done.strategy, ranks=dict(done.ranks), errors={k: float(v) for k, v in done.errors.items()})


def _write_merged(repo: Repo, staging: Path, commit: str, rank: int | None, info: dict[str, Any]) -> Exported:
    """``save_pretrained`` of the materialized model (base plus verified deltas) and its tokenizer."""
    state = repo.materialize(commit)
    state.model.save_pretrained(staging)
    state.tokenizer.save_pretrained(staging)
    return Exported(**info, edits=tuple(e.id for e in state.edits), packs=repo.stack(commit).packs,
                    strategy="merged")


def _put_in_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; what was there (forced, or an empty directory) is moved aside
    first and deleted only once the new directory is in place."""
    aside: Path | None = None
    if target.exists() or target.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        target.rename(aside / "old")
    try:
        staging.rename(target)
    except BaseException:
        if aside is not None:
            (aside / "old").rename(target)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
