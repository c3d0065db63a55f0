"""``--method auto``: pick the edit method per fact, and say why (stage ④).

An atomic (subject, relation, object) fact goes to ROME — one rank-one write, seconds, a few kilobytes —
or to MEMIT when several atomic facts arrive together and MEMIT is installed. A passage's probes go to
the LoRA distillation trainer, which learns from the passage in the teacher's context. The methods are
looked up in the registry at call time, so a plug-in that replaces one of them is used as it is.

The reason lands in ``info["auto_reason"]`` and the chosen methods in ``info["auto_methods"]``; when
both kinds of facts arrive together their deltas are concatenated (exact: ranks add).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cathrepo.delta import Delta, LowRank
from cathrepo.edits.base import EDIT_METHODS, EditEnv, EditMethod, EditResult, get_method
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.passage import PassageFact
from cathrepo.facts.schema import Fact


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class AutoParams:
    """Which methods ``auto`` delegates to, and their parameter overrides."""

    atomic: str = _help("Method for a single atomic fact.", "rome")
    batch: str = _help("Method for several atomic facts at once (falls back to `atomic` if missing).", "memit")
    passage: str = _help("Method for a passage's probes.", "lora")
    overrides: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict, metadata={"help": "Per-method parameter overrides {method: {name: value}}."}
    )

    def __post_init__(self) -> None:
        for name in ("atomic", "batch", "passage"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidInputError(f"auto parameter {name} must name an edit method.")
        if "auto" in (self.atomic, self.batch, self.passage):
            raise InvalidInputError("auto cannot delegate to itself.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@EDIT_METHODS.register
class AutoMethod(EditMethod):
    """ROME/MEMIT for atomic facts, the LoRA trainer for passages."""

    name = "auto"
    params_cls = AutoParams
    batched = True

    def plan(self, facts: Sequence[Fact]) -> list[tuple[str, list[Fact], str]]:
        """(method, facts, reason) groups for ``facts``."""
        p: AutoParams = self.params
        passages: list[Fact] = [f for f in facts if isinstance(f, PassageFact)]
        atomic = [f for f in facts if not isinstance(f, PassageFact)]
        groups: list[tuple[str, list[Fact], str]] = []
        if passages:
            groups.append((p.passage, passages, f"{len(passages)} probe(s) of a free-text passage: the "
                           f"distillation trainer learns from the passage in the teacher's context"))
        if len(atomic) == 1:
            groups.append((p.atomic, atomic, "an atomic (subject, relation, object) fact: a rank-one "
                           "locate-and-edit write is the smallest, fastest change"))
        elif atomic and p.batch in EDIT_METHODS:
            groups.append((p.batch, atomic, f"{len(atomic)} atomic facts at once: a batched multi-layer write"))
        elif atomic:
            groups.append((p.atomic, atomic, f"{len(atomic)} atomic facts; '{p.batch}' is not installed, so "
                           f"'{p.atomic}' edits them one after another"))
        return groups

    def _run(self, method: str, model: Any, tokenizer: Any, facts: list[Fact], env: EditEnv) -> EditResult:
        cls = get_method(method)
        params = cls.params_for(model, dict(self.params.overrides.get(method, {})))
        return cls(params).compute(model, tokenizer, facts, env)

    def compute(self, model: Any, tokenizer: Any, facts: Sequence[Fact], env: EditEnv) -> EditResult:
        if not facts:
            raise InvalidInputError("No facts to edit.")
        groups = self.plan(facts)
        results = [(method, reason, self._run(method, model, tokenizer, group, env))
                   for method, group, reason in groups]
        if len(results) == 1:
            method, reason, result = results[0]
            info = {**result.info, "auto_reason": reason, "auto_methods": [method]}
            site = {**result.site, "method": method}
            return EditResult(result.delta, site, info, result.data, result.attribution)
        delta = _concatenate([r.delta for _, _, r in results])
        info = {"auto_reason": "; ".join(reason for _, reason, _ in results),
                "auto_methods": [m for m, _, _ in results],
                "parts": {m: dict(r.info) for m, _, r in results}}
        site = {"parts": {m: dict(r.site) for m, _, r in results},
                "modules": sorted({n for _, _, r in results for n in r.delta.modules})}
        data = [row for _, _, r in results for row in r.data]
        attribution = {m: r.attribution for m, _, r in results if r.attribution}
        return EditResult(delta, site, info, data, attribution or None)


def _concatenate(deltas: Sequence[Delta]) -> Delta:
    """One Delta whose per-module update is the sum of the given ones (factors concatenated: exact)."""
    import torch

    parts: dict[str, list[LowRank]] = {}
    for delta in deltas:
        for name, factor in delta.factors.items():
            parts.setdefault(name, []).append(factor.folded())
    factors = {
        name: fs[0] if len(fs) == 1 else LowRank(torch.cat([f.B for f in fs], 1), torch.cat([f.A for f in fs], 0))
        for name, fs in parts.items()
    }
    return Delta(factors, deltas[0].base_model)
