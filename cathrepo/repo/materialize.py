"""Materialize a revision: the base model plus the active deltas, each verified before it is applied.

This is what ``generate`` (and later serving and export) stand on. Deltas are read from the DVC cache
through the pointers committed at the revision, so any revision materializes without a checkout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import VerificationError
from cathrepo.repo import layout

if TYPE_CHECKING:
    from cathrepo.edits.delta import Delta
    from cathrepo.facts.probes import ProbeSet
    from cathrepo.provenance.manifest import EditRecord
    from cathrepo.repo import Repo


@dataclass(frozen=True)
class ActiveEdit:
    """One edit of a revision's active set, loaded and verified."""

    id: str
    record: EditRecord
    delta: Delta


@dataclass
class Materialized:
    """A model with a revision's active edits applied (``applied`` undoes them)."""

    model: Any
    tokenizer: Any
    rev: str
    commit: str
    edits: list[ActiveEdit] = field(default_factory=list)
    applied: Any = None


def load_edit(repo: Repo, edit_id: str, rev: str = "HEAD", *, verify: bool = True) -> ActiveEdit:
    """Read (and by default verify) one edit at ``rev``; raises naming the first file that fails."""
    from cathrepo.edits.delta import delta_from_parts
    from cathrepo.repo.verify import check_edit, weights_bytes

    if verify:
        record, issues = check_edit(repo, rev, edit_id)
        if issues:
            raise VerificationError(f"Edit {edit_id} does not verify: {issues[0]}.",
                                    hint="Run 'cathrepo verify' for the full list.")
    else:
        record = repo.record(edit_id, rev)
    assert record is not None
    config_bytes = repo.git.show_file(rev, layout.edit_path(edit_id, layout.ADAPTER_CONFIG))
    if config_bytes is None:
        raise VerificationError(f"{layout.edit_path(edit_id, layout.ADAPTER_CONFIG)} is missing at {rev}.")
    weights, _ = weights_bytes(repo, rev, edit_id)
    delta = delta_from_parts(json.loads(config_bytes), weights, what=f"edit {edit_id}")
    return ActiveEdit(edit_id, record, delta)


def active_edits(repo: Repo, rev: str = "HEAD", *, verify: bool = True) -> list[ActiveEdit]:
    """The active set of ``rev`` in stack order, each loaded and verified."""
    return [load_edit(repo, eid, rev, verify=verify) for eid in repo.stack(rev).active]


def probe_sets(repo: Repo, edit_ids: list[str], rev: str = "HEAD") -> list[ProbeSet]:
    """The committed probes of each edit (the regression suite)."""
    from cathrepo.facts.probes import ProbeSet

    sets = []
    for eid in edit_ids:
        data = repo.git.show_file(rev, layout.edit_path(eid, layout.PROBES))
        if data is None:
            raise VerificationError(f"{layout.edit_path(eid, layout.PROBES)} is missing at {rev}.")
        sets.append(ProbeSet.from_jsonl(data.decode("utf-8")))
    return sets


def materialize(repo: Repo, rev: str = "HEAD", *, verify: bool = True) -> Materialized:
    """Load the verified base model and apply ``rev``'s active deltas in order."""
    from cathrepo.edits.delta import apply_deltas

    commit = repo.git.rev_parse(rev)
    edits = active_edits(repo, commit, verify=verify)
    model, tokenizer = repo.load_base()
    record = apply_deltas(model, [e.delta for e in edits])
    return Materialized(model, tokenizer, rev, commit, edits, record)


@dataclass(frozen=True)
class Generation:
    """A greedy continuation and the revision and edits that produced it."""

    prompt: str
    text: str
    rev: str
    commit: str
    edits: tuple[str, ...]


def generate(repo: Repo, prompt: str, rev: str = "HEAD", *, max_new_tokens: int = 32) -> Generation:
    """Greedy continuation of ``prompt`` by the model materialized at ``rev``."""
    from cathrepo.gates.scoring import greedy_continuation

    state = materialize(repo, rev)
    text = greedy_continuation(state.model, state.tokenizer, prompt, max_new_tokens=max_new_tokens)
    return Generation(prompt, text, rev, state.commit, tuple(e.id for e in state.edits))
