"""``cathrepo rebase --onto-base MODEL``: carry every active edit to a new version of the base model.

A delta means something only on the weights it was computed on, so nothing is copied: on a new branch
(``rebase/<sha256 prefix>`` unless named) one signed commit moves ``cathrepo.toml`` to the new base and
empties the active set, then each active edit's facts are edited again, in order, on the new base
(the same method, the repository's parameters for the new model, the same provenance, the gates of
``cathrepo edit``), each its own signed commit naming the edit it carries (``Cathrepo-Carries``). An edit
whose gates refuse it on the new base is not carried and is reported with its failing gates; review
the branch and merge it like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import InvalidInputError
from cathrepo.repo import layout
from cathrepo.repo.lock import locked

if TYPE_CHECKING:
    from cathrepo.facts.schema import EditRequest
    from cathrepo.provenance.manifest import EditRecord
    from cathrepo.repo import Repo


@dataclass
class RebaseOutcome:
    """The branch, the new base, the edits carried (old id → new id, commit) and those refused."""

    branch: str
    base: dict[str, str]
    carried: list[dict[str, str]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"branch": self.branch, "base": self.base, "carried": self.carried, "refused": self.refused}


def request_of_record(record: EditRecord) -> EditRequest:
    """The request an edit answered: its facts and provenance."""
    from cathrepo.facts.schema import EditRequest, Fact

    facts = [Fact.from_dict(f) for f in (record.facts or (record.fact,))]
    return EditRequest(facts[0], source=record.source, author=record.author, confidence=record.confidence,
                       risk=record.risk, more=tuple(facts[1:]), passage=record.passage, topics=record.topics)


@locked("rebase")
def rebase_onto_base(repo: Repo, source: str, *, branch: str | None = None,
                     progress: Callable[[str], None] | None = None) -> RebaseOutcome:
    """Recompute every active edit on the base model ``source`` on a new branch (module docstring)."""
    from cathrepo.models import family_for, resolve_model, weights_sha256
    from cathrepo.repo.edit import EditSession

    old = repo.config
    resolved = resolve_model(source)
    sha = weights_sha256(resolved.path)
    if sha == old.base.sha256:
        raise InvalidInputError(f"'{source}' is the base this repository is on ({sha[:12]}…).", hint="Nothing to do.")
    family = family_for(_model_type(resolved.path)).name
    records = [(eid, repo.record(eid)) for eid in repo.stack("HEAD").active]
    name = branch or f"rebase/{sha[:12]}"
    repo.checkout(name, create=True)
    base = {"name": resolved.name, "source": resolved.source, "sha256": sha, "family": family}
    _commit_base(repo, base, old.base.sha256)
    outcome = RebaseOutcome(name, base)
    session = EditSession.open(repo)
    for old_id, record in records:
        request = request_of_record(record)
        result = session.attempt(request, method=record.method, progress=progress)
        if not result.gates.passed:
            outcome.refused.append({"edit": old_id, "summary": record.summary,
                                    "failed": [f.summary() for f in result.gates.failures]})
            continue
        result = session.commit(request, result, method=record.method, carries=old_id)
        assert result.edit_id is not None and result.commit is not None
        outcome.carried.append({"edit": old_id, "now": result.edit_id, "commit": result.commit})
    return outcome


def _model_type(path: Any) -> str:
    from cathrepo.repo.init import _model_type as read

    return read(path)


def _commit_base(repo: Repo, base: dict[str, str], old_sha: str) -> str:
    """One signed commit: ``cathrepo.toml`` on the new base, an empty active set (packs too)."""
    import dataclasses

    from cathrepo.config import BaseModelConfig, dump_config

    config = dataclasses.replace(repo.config, base=BaseModelConfig(**base))
    saved = {p: (repo.root / p).read_bytes() for p in (layout.CONFIG, layout.STACK)}
    try:
        (repo.root / layout.CONFIG).write_text(dump_config(config), encoding="utf-8")
        (repo.root / layout.STACK).write_bytes(type(repo.stack("HEAD"))().to_bytes())
        repo.git.add([layout.CONFIG, layout.STACK])
        return repo.git.commit(f"Rebase onto base {base['name']} ({base['sha256'][:12]})",
                               {"Cathrepo-Action": "rebase", "Cathrepo-Base-Sha256": base["sha256"],
                                "Cathrepo-Old-Base-Sha256": old_sha}, sign_with=repo.signing_key())
    except BaseException:
        for path, data in saved.items():
            (repo.root / path).write_bytes(data)
        repo.git.unstage([layout.CONFIG, layout.STACK])
        raise
