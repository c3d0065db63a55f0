"""Materialize a revision: the base model plus the active deltas, each verified before it is applied.

This is what ``generate`` (and later serving and export) stand on. Deltas are read through
:mod:`cathrepo.repo.state`, so any revision materializes without a checkout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.repo.state import ActiveEdit, active_edits

if TYPE_CHECKING:
    from cathrepo.repo import Repo


@dataclass
class Materialized:
    """A model with a revision's active edits applied (``applied`` undoes them)."""

    model: Any
    tokenizer: Any
    rev: str
    commit: str
    edits: list[ActiveEdit] = field(default_factory=list)
    applied: Any = None


def materialize(repo: Repo, rev: str = "HEAD", *, verify: bool = True) -> Materialized:
    """Load the verified base model and apply ``rev``'s active deltas in order."""
    from cathrepo.delta import apply_deltas
    from cathrepo.repo.packs import stack_deltas
    from cathrepo.repo.verified import Verified

    commit = repo.git.rev_parse(rev)
    edits = active_edits(repo, commit, verify=verify, verified=Verified.of(repo.root))
    deltas = stack_deltas(repo, commit, edits)  # packs in place of the edits they fold
    model, tokenizer = repo.load_base()
    record = apply_deltas(model, deltas)
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
    from cathrepo.lm.decoding import greedy_continuations

    state = materialize(repo, rev)
    text = greedy_continuations(state.model, state.tokenizer, [prompt], max_new_tokens=max_new_tokens)[0]
    return Generation(prompt, text, rev, state.commit, tuple(e.id for e in state.edits))
