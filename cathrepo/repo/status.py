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
    stack = _stack(repo, config) if active else {"restrain": config.stack.restrain or None}
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
        "stack": stack,
        "changes": repo.git.status_porcelain(),
        "storage": storage,
    }


def _stack(repo: Repo, config: Any) -> dict[str, Any]:
    """How the active stack is applied: as it is, or restrained (``[stack] restrain``), with, per module,
    the summed update's largest singular value, the bound and how many directions stand above it."""
    out: dict[str, Any] = {"restrain": config.stack.restrain or None}
    if not config.stack.restrain:
        return out
    from cathrepo.merging.consolidate import consolidate
    from cathrepo.merging.restrain import restrain
    from cathrepo.repo.packs import applied_at, base_norms, labelled
    from cathrepo.repo.state import active_edits
    from cathrepo.repo.verified import Verified

    out["factor"] = config.stack.restrain_factor
    try:
        deltas = applied_at(repo, "HEAD", active_edits(repo, "HEAD", verified=Verified.of(repo.root)))
        summed = consolidate(labelled(repo, deltas), "cat").delta
        held = restrain(summed, base_norms(repo, summed.modules), config.stack.restrain, config.stack.restrain_factor)
        out["modules"] = {m: {"top": held.top[m], "bound": held.bound[m], "above": held.above[m]}
                          for m in summed.modules}
    except CathrepoError as exc:
        out["problem"] = exc.message
    return out
