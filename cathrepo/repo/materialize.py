"""Materialize a revision: the base model plus the active deltas, each verified before it is applied.

This is what ``generate``, ``explain`` and serving stand on. Deltas are read through
:mod:`cathrepo.repo.state`, so any revision materializes without a checkout. With a tenant, only that
tenant's share of the active set is applied (:mod:`cathrepo.repo.tenants`); an unknown tenant is an
error, never the full set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.repo.state import ActiveEdit

if TYPE_CHECKING:
    from cathrepo.repo import Repo


@dataclass
class Materialized:
    """A model with a revision's active edits (a tenant's share of them) applied (``applied`` undoes
    them; ``deltas``: what was applied, packs and a restrained stack as they are carried); ``verified``:
    whether every edit's signature and hashes were checked before it was applied."""

    model: Any
    tokenizer: Any
    rev: str
    commit: str
    edits: list[ActiveEdit] = field(default_factory=list)
    applied: Any = None
    tenant: str | None = None
    verified: bool = True
    deltas: list[Any] = field(default_factory=list)


def materialize(repo: Repo, rev: str = "HEAD", *, verify: bool = True, tenant: str | None = None) -> Materialized:
    """Load the verified base model and apply ``rev``'s active deltas in order (only ``tenant``'s, when
    given)."""
    from cathrepo.delta import apply_deltas
    from cathrepo.repo.packs import stack_deltas
    from cathrepo.repo.tenants import tenant_edits

    commit = repo.git.rev_parse(rev)
    edits = tenant_edits(repo, tenant, commit, verify=verify, label=rev)
    deltas = stack_deltas(repo, commit, edits)  # packs in place of the edits they fold (whole packs only)
    model, tokenizer = repo.load_base()
    record = apply_deltas(model, deltas)
    return Materialized(model, tokenizer, rev, commit, edits, record, tenant, verify, deltas)


@dataclass(frozen=True)
class Generation:
    """A greedy continuation and the revision and edits that produced it."""

    prompt: str
    text: str
    rev: str
    commit: str
    edits: tuple[str, ...]
    tenant: str | None = None


def generate(repo: Repo, prompt: str, rev: str = "HEAD", *, max_new_tokens: int = 32,
             tenant: str | None = None) -> Generation:
    """Greedy continuation of ``prompt`` by the model materialized at ``rev`` (for ``tenant``)."""
    from cathrepo.lm.decoding import greedy_continuations

    state = materialize(repo, rev, tenant=tenant)
    text = greedy_continuations(state.model, state.tokenizer, [prompt], max_new_tokens=max_new_tokens)[0]
    return Generation(prompt, text, rev, state.commit, tuple(e.id for e in state.edits), tenant)
