"""``erase``: project the direction that carries a subject out of an MLP's output (stage ④ of DESIGN.md §2).

At the layer ROME would edit, the concept direction ``u`` is the difference of mean MLP-output
activations (``(d_model,)``, read at the subject's last token) between the fact's prompts with the
subject and the same prompts with other subjects (a difference-of-means estimator: the direction a
linear probe separating the two sets would find first; LEACE's whitened closed form is left for later).
Removing it from everything the projection writes is ``W' = (I - s·u uᵀ) W``, i.e. the rank-one delta

    ΔW = -s · u (uᵀ W)        u: (out,), W: (out, in), ΔW: (out, in)

with ``s = strength`` (1: exact projection). ``info`` reports what else it took: the share of the
direction's component the other subjects' outputs carried (their mean |u·o| / |o| against the subject's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cathrepo.delta import Delta, LowRank
from cathrepo.edits.base import EDIT_METHODS, EditEnv, EditMethod, EditResult
from cathrepo.edits.forget import require_forgets
from cathrepo.exceptions import EditFailedError
from cathrepo.facts.schema import Fact


def _h(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EraseParams:
    """Parameters of ``erase`` (recorded in edit.json)."""

    mode: str = _h("erase", "The forget mode.")
    layer: int | None = _h(None, "Layer whose MLP output is projected (None: the family's ROME layer).")
    n_layers: int = _h(1, "Consecutive layers from ``layer`` each projected with its own direction.")
    strength: float = _h(1.0, "s in ΔW = -s·u(uᵀW): 1 removes the component, 2 reflects it.")
    phrasings: int = _h(3, "Relation templates besides the fact's prompt the direction is averaged over.")
    others: int = _h(16, "Other subjects (shipped known facts) whose mean is the 'without' side.")


@EDIT_METHODS.register
class EraseMethod(EditMethod):
    """Rank-one projection of the subject's direction out of the MLP output projection."""

    name = "erase"
    params_cls = EraseParams

    def compute(self, model: Any, tokenizer: Any, facts: Sequence[Fact], env: EditEnv) -> EditResult:
        from cathrepo.models import default_edit_layer, family_for, num_layers

        require_forgets(facts, "erase")
        p: EraseParams = self.params
        family = family_for(model)
        first = default_edit_layer(model) if p.layer is None else p.layer
        layers = [j for j in range(first, first + max(1, p.n_layers)) if j < num_layers(model)]
        factors: dict[str, list[LowRank]] = {}
        info: list[dict[str, Any]] = []
        data: list[dict[str, Any]] = []
        for fact in facts:
            prompts, others = _contrast(fact, p.phrasings, p.others)
            data += [{"role": "with", "prompt": t, "subject": fact.subject} for t in prompts]
            data += [{"role": "without", "prompt": t, "subject": s} for t, s in others]
            for layer in layers:
                module = family.layer_name("mlp_out", layer)
                factor, stats = _projection(model, tokenizer, module, fact.subject, prompts, others, p.strength)
                factors.setdefault(module, []).append(factor)
                info.append({"prompt": fact.prompt, "layer": layer, **stats})
        delta = Delta({m: _cat(fs) for m, fs in factors.items()}, base_model=getattr(model, "name_or_path", ""))
        return EditResult(delta=delta, site={"layers": layers, "modules": sorted(factors), "component": "mlp_out",
                                             "mode": "erase"},
                          info={"mode": "erase", "directions": info}, data=data)


def _contrast(fact: Fact, phrasings: int, n_others: int) -> tuple[list[str], list[tuple[str, str]]]:
    """The fact's prompts with its subject, and (prompt, subject) of the same templates with others."""
    from cathrepo.edits.rome.method import relation_phrasings, same_subject
    from cathrepo.facts.probes import load_known_facts

    prompts = list(dict.fromkeys([fact.prompt, *relation_phrasings(fact, phrasings)]))
    subjects: list[str] = []
    for k in load_known_facts():
        if not same_subject(k.subject, fact.subject) and k.subject not in subjects and "{" not in k.subject:
            subjects.append(k.subject)
        if len(subjects) >= n_others:
            break
    others = [(t.replace(fact.subject, s), s) for t in prompts for s in subjects]
    return prompts, others


def _projection(model: Any, tokenizer: Any, module: str, subject: str, prompts: Sequence[str],
                others: Sequence[tuple[str, str]], strength: float) -> tuple[LowRank, dict[str, float]]:
    """The rank-one projection delta of ``module`` and how much of the direction the others carried."""
    import torch

    from cathrepo.models import get_module, is_conv1d

    with_ = _outputs(model, tokenizer, module, [(t, subject) for t in prompts])  # (n, d_model)
    without = _outputs(model, tokenizer, module, others)  # (m, d_model)
    diff = with_.mean(0) - without.mean(0)
    norm = float(diff.norm())
    if not norm or not torch.isfinite(diff).all():
        raise EditFailedError(f"erase found no direction for '{subject}' at {module}.")
    u = diff / norm  # (out,)
    weight = get_module(model, module).weight.detach().float()
    w = weight.T if is_conv1d(get_module(model, module)) else weight  # (out, in)
    factor = LowRank(B=(-strength * u).unsqueeze(1).cpu(), A=(u @ w).unsqueeze(0).cpu())

    def share(x: torch.Tensor) -> float:
        return float(((x @ u).abs() / x.norm(dim=1).clamp_min(1e-12)).mean())

    return factor, {"subject_share": round(share(with_), 4), "others_share": round(share(without), 4),
                    "direction_norm": round(norm, 4)}


def _outputs(model: Any, tokenizer: Any, module: str, rows: Sequence[tuple[str, str]]) -> Any:
    """``module``'s output at each (prompt, subject)'s last subject token, (rows, d_model), float32."""
    import torch

    from cathrepo.lm.hooks import capture
    from cathrepo.lm.tokens import subject_last_index
    from cathrepo.models import model_device

    device = model_device(model)
    out = []
    with torch.no_grad():
        for prompt, subject in rows:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
            with capture(model, [module]) as seen:
                model(input_ids=ids)
            out.append(seen.outputs[module][0, subject_last_index(tokenizer, prompt, subject)].float().cpu())
    return torch.stack(out)


def _cat(factors: list[LowRank]) -> LowRank:
    import torch

    if len(factors) == 1:
        return factors[0]
    return LowRank(torch.cat([f.B for f in factors], dim=1), torch.cat([f.A for f in factors], dim=0))
