"""Tenants: which of a revision's active edits one customer's model carries (``[tenants.<name>]``).

A tenant's edits are a filter over the active set of the revision served, in stack order: ``include``
selects (empty: every active edit), ``exclude`` then takes out. ``edit:<prefix>`` names one active edit,
``tag:<t>`` and ``branch:<b>`` every edit active at that ref, so a tenant pinned to ``tag:acme-v1`` keeps
the edits it had there and still loses one that the served revision reverted. The tenants are read from
``cathrepo.toml`` at the revision served, so a commit fixes both the edits and who sees them. An unknown
tenant is an error, never the base model or the full set. docs/tenants.md has the user's view.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cathrepo.config import parse_selector
from cathrepo.exceptions import ConfigError, NotFoundError

if TYPE_CHECKING:
    from cathrepo.config import TenantConfig
    from cathrepo.repo import Repo
    from cathrepo.repo.state import ActiveEdit

log = logging.getLogger(__name__)

#: The git ref a selector kind names (``refs/heads/<b>``, so a branch is never taken for a tag).
_REFS = {"tag": "refs/tags/{}", "branch": "refs/heads/{}"}


class UnknownTenantError(NotFoundError):
    """A tenant that ``cathrepo.toml`` at the revision served does not define."""


def tenant_names(repo: Repo, rev: str = "HEAD") -> list[str]:
    """The tenants ``cathrepo.toml`` defines at ``rev``, sorted."""
    return sorted(repo.config_at(rev).tenants)


def tenant_config(repo: Repo, tenant: str, rev: str = "HEAD", *, label: str | None = None) -> TenantConfig:
    """``[tenants.<tenant>]`` at ``rev`` (called ``label`` in messages); raises
    :class:`UnknownTenantError` listing the known ones."""
    tenants = repo.config_at(rev).tenants
    if tenant not in tenants:
        known = ", ".join(sorted(tenants)) or "none"
        raise UnknownTenantError(f"No tenant '{tenant}' in cathrepo.toml at {label or rev}.",
                                 hint=f"Known tenants: {known}. Tenants are [tenants.<name>] tables "
                                      "(docs/tenants.md).")
    return tenants[tenant]


def tenant_ids(repo: Repo, tenant: str | None, rev: str = "HEAD") -> list[str]:
    """The ids of ``tenant``'s edits at ``rev`` in stack order (None: every active edit); reads no
    weights."""
    return _ids(repo, tenant, repo.git.rev_parse(rev), rev)


def _ids(repo: Repo, tenant: str | None, sha: str, rev: str) -> list[str]:
    active = list(repo.stack(sha).active)
    if tenant is None:
        return active
    config = tenant_config(repo, tenant, sha, label=rev)
    chosen = set(active)
    if config.include:
        chosen = set().union(*(_selected(repo, tenant, active, s) for s in config.include))
    for selector in config.exclude:
        chosen -= _selected(repo, tenant, active, selector)
    return [e for e in active if e in chosen]


def _selected(repo: Repo, tenant: str, active: Sequence[str], selector: str) -> set[str]:
    """The active edits one selector names."""
    kind, value = parse_selector(selector)
    if kind == "edit":
        matches = {e for e in active if e.startswith(value)}
        if len(matches) > 1:
            raise ConfigError(f"cathrepo.toml [tenants.{tenant}]: '{selector}' matches {len(matches)} active "
                              f"edits ({', '.join(sorted(matches))}).", hint="Give more digits of the id.")
        if not matches:
            log.info("tenant %s: %s names no active edit (reverted, or not merged yet)", tenant, selector)
        return matches
    try:
        sha = repo.git.rev_parse(_REFS[kind].format(value))
    except NotFoundError:
        raise ConfigError(f"cathrepo.toml [tenants.{tenant}] names {selector}, and there is no {kind} "
                          f"'{value}' in this repository.",
                          hint=f"Create the {kind} (or fetch it), or correct [tenants.{tenant}].") from None
    return set(active) & set(repo.stack(sha).active)


def tenant_edits(repo: Repo, tenant: str | None, rev: str = "HEAD", *, verify: bool = True,
                 label: str | None = None) -> list[ActiveEdit]:
    """``tenant``'s edits at ``rev`` (None: every active edit), loaded and verified, in stack order;
    errors call the revision ``label`` (the name the user gave, when ``rev`` is its commit id)."""
    from cathrepo.repo.state import active_edits
    from cathrepo.repo.verified import Verified

    sha = repo.git.rev_parse(rev)
    ids = _ids(repo, tenant, sha, label or rev)
    return active_edits(repo, sha, verify=verify, verified=Verified.of(repo.root) if verify else None, ids=ids)
