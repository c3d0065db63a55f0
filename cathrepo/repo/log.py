"""``cathrepo log`` and ``cathrepo show``: the history of edits, read from commit trailers and records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cathrepo.repo import Repo


@dataclass(frozen=True)
class LogEntry:
    """One commit of the history, as cathrepo understands it."""

    commit: str
    date: str
    author: str
    action: str  # init, edit, revert or other
    edit_id: str | None
    summary: str
    method: str | None
    gates: str | None
    active: bool  # the edit is in the active set at the revision logged
    metrics: dict[str, float] = field(default_factory=dict)  # with ``log(metrics=True)``: see METRICS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The trailers a log entry shows (the others, one per gate and file hash, are not read).
TRAILERS = ("Cathrepo-Action", "Cathrepo-Edit", "Cathrepo-Method", "Cathrepo-Gates")
#: What ``log --metrics`` reads from each commit's gate trailers, the drift every gated commit records:
#: (name, gate, the gate's metric). Retention is against the base model (the share of known facts
#: still answered), perplexity the stack's after the commit, norm growth the commit's own (against the
#: stack before it).
METRICS = (
    ("retention", "retention", "retention"),
    ("perplexity", "perplexity", "ppl"),
    ("perplexity_growth", "perplexity", "growth"),
    ("norm_growth", "norms", "max_growth"),
)


def _metrics(trailers: dict[str, str]) -> dict[str, float]:
    from cathrepo.gates.results import outcome_numbers, trailer_key

    out = {}
    for name, gate, metric in METRICS:
        value = outcome_numbers(trailers.get(trailer_key(gate), "")).get(metric)
        if value is not None:
            out[name] = value
    return out


def log(repo: Repo, rev: str = "HEAD", *, max_count: int | None = None, metrics: bool = False) -> list[LogEntry]:
    """Commits reachable from ``rev``, newest first; with ``metrics``, each with the numbers of METRICS
    its gate trailers recorded (a commit whose gates did not measure one has none of it)."""
    active = set(repo.stack(rev).active)
    from cathrepo.gates.results import trailer_key

    keys = TRAILERS + tuple(dict.fromkeys(trailer_key(g) for _, g, _ in METRICS)) if metrics else TRAILERS
    entries = []
    for c in repo.git.log(rev, max_count=max_count, trailer_keys=keys):
        trailers = c.trailers
        action = trailers.get("Cathrepo-Action", "other")
        edit_id = trailers.get("Cathrepo-Edit")
        entries.append(LogEntry(
            commit=c.sha, date=c.date, author=f"{c.author_name} <{c.author_email}>", action=action,
            edit_id=edit_id, summary=c.subject, method=trailers.get("Cathrepo-Method"),
            gates=trailers.get("Cathrepo-Gates"), active=bool(edit_id) and edit_id in active and action in ("edit", "forget"),
            metrics=_metrics(trailers) if metrics else {},
        ))
    return entries


def show(repo: Repo, ref: str, rev: str = "HEAD") -> dict[str, Any]:
    """An edit's record, whether it is active, the commit that made it, and its approvals (its tier, how
    many it needs, those that count and the approval files that do not)."""
    from cathrepo.repo.approve import statuses

    edit_id = repo.resolve_edit(ref, rev)
    record = repo.record(edit_id, rev)
    made_by = next((e.commit for e in log(repo, rev) if e.edit_id == edit_id and e.action in ("edit", "forget")), None)
    (approval,) = statuses(repo, rev, [edit_id])
    return {"id": edit_id, "active": edit_id in repo.stack(rev).active, "commit": made_by,
            "record": record.to_dict(), "approvals": approval.to_dict()}
