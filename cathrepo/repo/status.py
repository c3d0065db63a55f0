"""``cathrepo status``: the base model, the active edits, the work tree and the storage state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import CathrepoError

if TYPE_CHECKING:
    from cathrepo.repo import Repo


def status(repo: Repo) -> dict[str, Any]:
    """A JSON-ready summary; problems are reported as values, not raised, so status always answers."""
    config = repo.config
    base: dict[str, Any] = {"name": config.base.name, "source": config.base.source,
                            "sha256": config.base.sha256, "family": config.base.family}
    try:
        repo.check_base()
        base["ok"] = True
    except CathrepoError as exc:
        base["ok"] = False
        base["problem"] = exc.message
    active = []
    for eid in repo.stack("HEAD").active:
        try:
            active.append({"id": eid, "summary": repo.record(eid).summary})
        except CathrepoError as exc:
            active.append({"id": eid, "summary": f"(unreadable: {exc.message})"})
    try:
        storage: dict[str, Any] = repo.storage.status()
    except CathrepoError as exc:
        storage = {"problem": exc.message}
    return {
        "root": str(repo.root),
        "branch": repo.git.current_branch(),
        "head": repo.git.head(),
        "base": base,
        "active": active,
        "changes": repo.git.status_porcelain(),
        "storage": storage,
    }
