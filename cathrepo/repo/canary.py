"""``cathrepo canary --prompts FILE [--auto-rollback]``: compare what canary serves with production.

On real prompts (a text file, one prompt per line, or JSONL with a ``prompt`` field) the model as the
``canary`` environment serves it is compared with production's (the base model alone when production
serves nothing yet): the next-token KL(production ‖ canary) of each prompt, the greedy answers that
changed, and the regression suite of the edits both serve (no edit production holds may break on
canary). Past a threshold the canary fails; with ``auto_rollback`` canary is rolled back in a signed
deployment-log entry that names the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import InvalidInputError

if TYPE_CHECKING:
    from cathrepo.delta import Delta
    from cathrepo.gates.results import GateReport
    from cathrepo.repo import Repo

ANSWER_TOKENS = 12
PROMPT_LIMIT = 10_000


@dataclass
class CanaryReport:
    """What the comparison found, and whether canary was rolled back."""

    canary: str
    production: str | None
    prompts: int
    kl_mean: float
    kl_max: float
    changed: list[dict[str, str]] = field(default_factory=list)
    regression: GateReport | None = None
    limits: dict[str, float] = field(default_factory=dict)
    rolled_back: str | None = None

    @property
    def changed_share(self) -> float:
        return len(self.changed) / self.prompts if self.prompts else 0.0

    @property
    def failures(self) -> list[str]:
        out = []
        if self.kl_mean > self.limits["max_kl"]:
            out.append(f"mean next-token KL {self.kl_mean:.4f} > {self.limits['max_kl']}")
        if self.changed_share > self.limits["max_changed"]:
            out.append(f"{len(self.changed)} of {self.prompts} answers changed "
                       f"({self.changed_share:.1%} > {self.limits['max_changed']:.1%})")
        if self.regression is not None and not self.regression.passed:
            out.append("an edit production serves breaks on canary (regression)")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": self.failures, "canary": self.canary,
                "production": self.production, "prompts": self.prompts, "kl_mean": self.kl_mean,
                "kl_max": self.kl_max, "changed_share": self.changed_share, "changed": self.changed,
                "limits": self.limits, "rolled_back": self.rolled_back,
                "regression": self.regression.to_dict() if self.regression else None}


def read_prompts(path: Path) -> list[str]:
    """One prompt per line, or JSONL with a ``prompt`` field; blank lines skipped."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"Cannot read prompts from '{path}': {exc}.") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("{"):
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InvalidInputError(f"{path}:{n} is a JSON line without a 'prompt'.") from None
        else:
            prompts.append(line)
    if not prompts or len(prompts) > PROMPT_LIMIT:
        raise InvalidInputError(f"'{path}' holds {len(prompts)} prompts.", hint=f"Give 1 to {PROMPT_LIMIT}.")
    return prompts


def _deltas(repo: Repo, commit: str | None) -> tuple[list[str], list[Delta]]:
    from cathrepo.repo.packs import stack_deltas
    from cathrepo.repo.state import active_edits

    if commit is None:
        return [], []
    edits = active_edits(repo, commit)
    return [e.id for e in edits], stack_deltas(repo, commit, edits)


def canary(repo: Repo, prompts_file: Path, *, max_kl: float = 0.05, max_changed: float = 0.1,
           auto_rollback: bool = False, progress: Callable[[str], None] | None = None) -> CanaryReport:
    """Compare canary with production on ``prompts_file`` (see the module docstring)."""
    from cathrepo.delta import applied
    from cathrepo.gates.base import run_gates
    from cathrepo.gates.policy import GatePolicy
    from cathrepo.lm.decoding import greedy_continuations
    from cathrepo.lm.scoring import next_token_logprobs
    from cathrepo.repo.state import probe_sets

    prompts = read_prompts(prompts_file)
    served = repo.deployments().current
    if "canary" not in served:
        raise InvalidInputError("Nothing is on canary.", hint="Promote a revision first: cathrepo promote REV --to canary.")
    say = progress or (lambda _msg: None)
    prod_ids, prod = _deltas(repo, served.get("production"))
    canary_ids, cand = _deltas(repo, served["canary"])
    model, tokenizer = repo.load_base()
    out = {}
    for name, deltas in (("production", prod), ("canary", cand)):
        say(name)
        with applied(model, *deltas):
            out[name] = (next_token_logprobs(model, tokenizer, prompts),
                         greedy_continuations(model, tokenizer, prompts, max_new_tokens=ANSWER_TOKENS))
    p, q = out["production"][0], out["canary"][0]
    kl = (p.exp() * (p - q)).sum(-1)
    changed = [{"prompt": pr, "production": a, "canary": b}
               for pr, a, b in zip(prompts, out["production"][1], out["canary"][1], strict=True) if a != b]
    kept = [e for e in prod_ids if e in canary_ids]
    regression = None
    if kept:
        say("regression")
        regression = run_gates(model, tokenizer, before=prod, after=cand, suite=probe_sets(repo, kept),
                               policy=GatePolicy.from_dict(repo.config.gates), stage="promote", gates=["regression"],
                               base_hash=repo.config.base.sha256)
    report = CanaryReport(served["canary"], served.get("production"), len(prompts), float(kl.mean()),
                          float(kl.max()), changed, regression, {"max_kl": max_kl, "max_changed": max_changed})
    if not report.passed and auto_rollback:
        done = repo.rollback("canary", "canary check failed: " + "; ".join(report.failures))
        report.rolled_back = done.commit
    return report
