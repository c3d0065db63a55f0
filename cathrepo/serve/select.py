"""Which edits a request gets: the request's ``model`` field read as a tenant, a ref, or ``tenant@ref``.

As vLLM selects a LoRA adapter by the ``model`` field, ``cathrepo serve`` selects a set of active edits:

- ``REF``: every active edit of a revision: an environment the deployment log names (``production``,
  ``canary``: the commit it serves now), a branch, a tag or a commit id;
- ``TENANT``: that tenant's edits at the server's default ref (a tenant name wins over a ref of the same
  name);
- ``TENANT@REF``: that tenant's edits at ``REF``.

:func:`select` is the one place this happens. Everything it returns is verified (each edit's signature and
hashes, and the deployment log an environment is read from) and carries the provenance the server
reports with each answer. A commit never changes, so a :class:`Selector` keeps what it read per (commit,
tenant); only refs are resolved again on each request (a promotion is seen at once).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import NotFoundError

if TYPE_CHECKING:
    from cathrepo.delta import Delta
    from cathrepo.repo import Repo
    from cathrepo.repo.state import ActiveEdit

#: Selections kept per (commit, tenant): the active edits' deltas of a revision are a few MB at most.
KEEP_SELECTIONS = 32


@dataclass(frozen=True)
class ModelName:
    """A parsed ``model`` field: the tenant (None: every active edit) and the ref."""

    tenant: str | None
    ref: str


@dataclass(frozen=True)
class Selection:
    """The edits one request gets, with where they came from."""

    model: str
    ref: str
    commit: str
    tenant: str | None
    edits: tuple[ActiveEdit, ...]
    deltas: tuple[Delta, ...]
    origin: tuple[dict[str, Any], ...]

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """What identifies the materialized model: the commit and the edit ids, in order (two tenants
        with the same edits at one commit share a model)."""
        return self.commit, tuple(e.id for e in self.edits)

    def provenance(self) -> dict[str, Any]:
        """The ``cathrepo`` field of a response: the ref, commit, tenant and each active edit's record."""
        return {"model": self.model, "ref": self.ref, "commit": self.commit, "tenant": self.tenant,
                "edits": [{"id": e.id, "action": e.record.action, "summary": e.record.summary, **origin}
                          for e, origin in zip(self.edits, self.origin, strict=True)]}


def parse_model_name(name: str | None, default_ref: str, tenants: frozenset[str]) -> ModelName:
    """``name`` as a :class:`ModelName`; ``tenants``: the tenants defined at the default ref."""
    if name is None or not str(name).strip():
        return ModelName(None, default_ref)
    name = str(name).strip()
    if "@" in name:
        tenant, _, ref = name.partition("@")
        return ModelName(tenant or None, ref or default_ref)
    if name in tenants:
        return ModelName(name, default_ref)
    return ModelName(None, name)


class Selector:
    """Resolves ``model`` names against one repository; safe to call from several threads (one at a time
    reads the repository)."""

    def __init__(self, repo: Repo, default_ref: str) -> None:
        self.repo = repo
        self.default_ref = default_ref
        self._lock = threading.Lock()
        self._selections: OrderedDict[tuple[str, str | None], Selection] = OrderedDict()
        self._environments: tuple[str, dict[str, str]] | None = None  # (HEAD, env -> commit)
        self._tenants: dict[str, frozenset[str]] = {}

    def select(self, name: str | None) -> Selection:
        """The edits ``name`` selects, verified (see the module docstring).

        Raises:
            NotFoundError: no such ref or tenant (the server answers 404).
            VerificationError: an edit or the deployment log does not verify.
        """
        with self._lock:
            default_commit = self.resolve(self.default_ref)
            parsed = parse_model_name(name, self.default_ref, self._tenants_at(default_commit))
            commit = self.resolve(parsed.ref)
            key = (commit, parsed.tenant)
            cached = self._selections.get(key)
            if cached is None:
                cached = self._load(commit, parsed.tenant, parsed.ref)
                self._selections[key] = cached
                while len(self._selections) > KEEP_SELECTIONS:
                    self._selections.popitem(last=False)
            self._selections.move_to_end(key)
            label = name.strip() if name and name.strip() else self.default_ref
            return Selection(label, parsed.ref, commit, parsed.tenant, cached.edits, cached.deltas, cached.origin)

    def resolve(self, ref: str) -> str:
        """The commit ``ref`` names: an environment's current commit in HEAD's verified deployment log,
        else a git revision."""
        served = self.environments()
        if ref in served:
            return served[ref]
        try:
            return self.repo.git.rev_parse(ref)
        except NotFoundError:
            raise NotFoundError(f"The model '{ref}' names no environment, tenant, branch, tag or commit here.",
                                hint="List what this server serves with GET /v1/models.") from None

    def environments(self) -> dict[str, str]:
        """What each environment serves now, read again whenever HEAD moves (a promotion commits)."""
        from cathrepo.repo.promote import deployments

        head = self.repo.git.rev_parse("HEAD")
        if self._environments is None or self._environments[0] != head:
            self._environments = (head, dict(deployments(self.repo, rev=head).current))
        return self._environments[1]

    def models(self) -> list[dict[str, Any]]:
        """What ``GET /v1/models`` lists: the default ref, the environments, the branches and the tenants
        at the default ref, each with the commit it names now."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            default_commit = self.resolve(self.default_ref)
            out[self.default_ref] = {"ref": self.default_ref, "commit": default_commit, "tenant": None}
            for env, commit in self.environments().items():
                out.setdefault(env, {"ref": env, "commit": commit, "tenant": None})
            for branch in self.repo.git.run(["for-each-ref", "--format=%(refname:short)", "refs/heads"]).split():
                out.setdefault(branch, {"ref": branch, "commit": self.repo.git.rev_parse(branch), "tenant": None})
            for tenant in sorted(self._tenants_at(default_commit)):
                out.setdefault(tenant, {"ref": self.default_ref, "commit": default_commit, "tenant": tenant})
            return [{"id": name, **info} for name, info in out.items()]

    def _tenants_at(self, commit: str) -> frozenset[str]:
        """The tenants ``cathrepo.toml`` defines at ``commit``, read once per commit."""
        if commit not in self._tenants:
            self._tenants[commit] = frozenset(tenant_names(self.repo, commit))
        return self._tenants[commit]

    def _load(self, commit: str, tenant: str | None, label: str) -> Selection:
        edits = selected_edits(self.repo, commit, tenant, label)
        deltas = selected_deltas(self.repo, commit, edits)
        origin = edits_provenance(self.repo, commit, edits)
        return Selection("", "", commit, tenant, tuple(edits), tuple(deltas), tuple(origin[e.id] for e in edits))


# --- the edits of a tenant or a whole revision -----------------------------------------------------


def tenant_names(repo: Repo, commit: str) -> list[str]:
    """The tenants ``cathrepo.toml`` defines at ``commit``."""
    from cathrepo.repo.tenants import tenant_names as names

    return names(repo, commit)


def selected_edits(repo: Repo, commit: str, tenant: str | None, label: str) -> list[ActiveEdit]:
    """The verified active edits ``tenant`` gets at ``commit`` (every active edit when None); errors name
    the revision ``label``.

    Raises:
        UnknownTenantError: ``cathrepo.toml`` at ``commit`` defines no such tenant (a NotFoundError).
    """
    from cathrepo.repo.tenants import tenant_edits

    return tenant_edits(repo, tenant, commit, verify=True, label=label)


def selected_deltas(repo: Repo, commit: str, edits: list[ActiveEdit]) -> list[Delta]:
    """What is applied for ``edits``: the revision's packs in place of the edits they fold (a pack only
    when all its edits are selected)."""
    from cathrepo.repo.packs import stack_deltas

    return stack_deltas(repo, commit, edits)


def edits_provenance(repo: Repo, commit: str, edits: list[ActiveEdit]) -> dict[str, dict[str, Any]]:
    """Per edit, what ``cathrepo explain`` reports of it too: source, author, created, risk, confidence,
    method, the principal whose ``edit.sig`` verifies, the approval status (tier, required, who counts)."""
    from cathrepo.repo.explain_screen import provenance

    return provenance(repo, commit, edits, verified=True)
