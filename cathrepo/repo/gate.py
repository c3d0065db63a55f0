"""``cathrepo gate [REV]``: run a stage's gates on the change a revision makes.

``before`` is the active set of ``against`` (default: REV's first parent; empty for a root commit, and
for ``against=BASE``: the base model alone), ``after`` the active set of REV. The probes of the edits REV
adds are the new probes; the probes of the edits active in both states are the regression suite. Every
delta is verified before it is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cathrepo.repo.state import load_edit, probe_sets

if TYPE_CHECKING:
    from cathrepo.gates.results import GateReport
    from cathrepo.repo import Repo

#: ``against=BASE``: gate REV against the base model with no edit (what an environment that runs nothing yet
#: serves); not a revision name, since no commit can be named by the empty string.
BASE = ""


def gate(
    repo: Repo,
    rev: str = "HEAD",
    *,
    stage: str = "revision",
    gates: Sequence[str] | None = None,
    against: str | None = None,
    policy_rev: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> GateReport:
    """Gate the change from ``against`` (default: first parent; :data:`BASE`: no edit) to ``rev``, under
    the gate policy of ``policy_rev`` (default: ``rev``'s own; a promotion passes HEAD, so a candidate
    cannot relax the gates it is promoted through)."""
    from cathrepo.gates.base import run_gates
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.pipeline import merge_probe_sets
    from cathrepo.repo.packs import stack_deltas

    commit = repo.git.rev_parse(rev)
    if against is None:
        parents = repo.git.log(commit, max_count=1)[0].parents
        base_rev = parents[0] if parents else None
    elif against == BASE:
        base_rev = None
    else:
        base_rev = repo.git.rev_parse(against)
    before_ids = list(repo.stack(base_rev).active) if base_rev else []
    after_ids = list(repo.stack(commit).active)
    # an edit active on both sides is one record (its id hashes it), so it is verified and read once, at
    # REV, and the two states share its delta
    after = [load_edit(repo, eid, commit) for eid in after_ids]
    loaded = {e.id: e for e in after}
    before = [loaded.get(eid) or load_edit(repo, eid, base_rev) for eid in before_ids] if base_rev else []
    new = [eid for eid in after_ids if eid not in before_ids]
    kept = [eid for eid in after_ids if eid in before_ids]
    config = repo.config_at(policy_rev or commit)
    model, tokenizer = repo.load_base()
    return run_gates(
        model,
        tokenizer,
        before=stack_deltas(repo, base_rev, before) if base_rev else [],  # packs in place of their edits
        after=stack_deltas(repo, commit, after),
        probes=merge_probe_sets(probe_sets(repo, new, commit)),
        suite=probe_sets(repo, kept, commit),
        policy=GatePolicy.from_dict(config.gates),
        stage=stage,
        gates=gates,
        base_hash=config.base.sha256,
        root=repo.root,
        progress=progress,
    )
