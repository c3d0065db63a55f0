"""MEMIT: a batch of facts written into the MLP output projections of several layers (Meng et al. 2023).

1. **Targets.** For each fact, ROME's value optimisation at the *last* edited layer ``L`` finds the change
   ``δᵢ`` of the residual stream at the subject's last token that makes the model say the target; the
   target hidden state is ``zᵢ = hᵢ + δᵢ`` (``hᵢ``: layer ``L``'s output there, averaged over the
   context prefixes, as the keys are).
2. **Spread.** For each edited layer ``l`` from the bottom, on the model with the lower layers' updates
   already applied: the keys ``K`` (inputs of the projection at each subject's last token, averaged over
   the prefixes), what is still missing ``R = Z − H`` at layer ``L``, and the least-squares update that
   gives layer ``l`` its share ``R / (L − l + 1)`` while disturbing the corpus keys as little as possible:

       ΔW_l = (R / (L − l + 1)) Kᵀ (λ C_l + K Kᵀ)⁻¹

   with ``C_l`` the corpus keys' second moment (ridged as ROME's) and ``λ`` = ``mom2_weight``. The
   update is low-rank as it is written: ``B = R / (L − l + 1)`` (out × n) and ``A = Kᵀ (λ C_l + K Kᵀ)⁻¹``
   (n × in), so a batch of n facts is a rank-n :class:`~cathrepo.delta.LowRank` per layer.

With ``null_space`` (the default) every layer's update is also held exactly off the keys of the edits
already active (AlphaEdit, Fang et al. 2025: the update is solved inside the orthogonal complement of the
preserved keys, ``ΔW = ΔW' P`` with ``P = I − K_p (K_pᵀ K_p)⁻¹ K_pᵀ``), so a batch does not move the
answers an earlier edit wrote. (The corpus keys are held by ``λ C_l`` rather than by a projector: this
model's key covariance falls smoothly over three orders of magnitude and has no null space to project on;
:mod:`cathrepo.edits.rome.protect`.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cathrepo.delta import AppliedDelta, Delta, LowRank, apply_delta
from cathrepo.edits.base import EDIT_METHODS, EditEnv, EditMethod, EditResult, require_writes
from cathrepo.edits.memit.params import FAMILY_DEFAULTS, MemitParams
from cathrepo.edits.rome.context import context_prefixes
from cathrepo.edits.rome.covariance import key_covariance, stats_dir
from cathrepo.edits.rome.method import relation_phrasings, same_subject, training_rows
from cathrepo.edits.rome.value import optimise_value
from cathrepo.exceptions import EditFailedError, InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.lm.tokens import subject_last_index

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BATCH = 48
#: Relative ridge on the Gram matrix of the preserved keys (as ROME's ``KEEP_RIDGE``).
KEEP_RIDGE = 1e-3


@EDIT_METHODS.register
class MemitMethod(EditMethod):
    """Mass-Editing Memory in a Transformer: a batch of facts, one least-squares update per layer."""

    name = "memit"
    params_cls = MemitParams
    batched = True

    @classmethod
    def default_params(cls, model: Any) -> MemitParams:
        from cathrepo.models import family_for

        return MemitParams(**FAMILY_DEFAULTS.get(family_for(model).name, {}))

    def compute(self, model: Any, tokenizer: Any, facts: Sequence[Fact], env: EditEnv) -> EditResult:
        import torch

        from cathrepo.lm.tokens import continuation_ids
        from cathrepo.models import (
            cache_dir,
            default_edit_layer,
            family_for,
            get_module,
            num_layers,
            weight_shape,
        )

        require_writes(facts, "MEMIT")
        p: MemitParams = self.params
        family = family_for(model)
        layers = p.edit_layers(default_edit_layer(model))
        if layers[-1] >= num_layers(model):
            raise InvalidInputError(f"MEMIT layer {layers[-1]} does not exist; the model has {num_layers(model)} layers.",
                                    hint=f"Pass layers between 0 and {num_layers(model) - 1}.")
        modules = [family.layer_name("mlp_out", layer) for layer in layers]
        width = weight_shape(get_module(model, modules[0]))[1]
        if p.corpus_rank >= width:
            raise InvalidInputError(f"MEMIT corpus_rank {p.corpus_rank} would hold every direction of the "
                                    f"{width}-wide keys; nothing would be left to write in.",
                                    hint=f"Pass a corpus_rank below {width} (0: off).")
        top = family.layer_name("layer", layers[-1])
        cache = env.cache_dir or cache_dir()
        stats = stats_dir(cache, env.base_hash)
        prefixes = context_prefixes(model, tokenizer, p.n_context, p.context_tokens, p.seed, stats)
        start = time.perf_counter()

        # 1. targets at the last layer, each fact on the model as it is
        vp = p.value_params(layers[-1])
        targets, per_fact, data = [], [], []
        for fact in facts:
            phrasings = relation_phrasings(fact, p.phrasings)
            value = optimise_value(model, tokenizer, modules[-1], fact, continuation_ids(tokenizer, fact.target_new),
                                   prefixes, vp, phrasings)
            if not value.delta.isfinite().all():
                raise EditFailedError(f"MEMIT found no usable target for '{fact.prompt}'.")
            targets.append(value.delta.float().cpu())
            per_fact.append({"steps": value.steps, "nll_start": round(value.nll_start, 4),
                             "nll_end": round(value.nll_end, 4), "delta_norm_ratio": round(value.norm_ratio, 4),
                             "stopped": value.stopped, "phrasings": phrasings})
            data.extend(training_rows(fact, prefixes, phrasings, p.phrasing_prefixes))
        first = read_keys(model, tokenizer, modules[0], top, facts, prefixes)  # also layer 0's keys below
        goal = first[1] + torch.stack(targets)  # (n, d_model): what layer L's output must become
        target_seconds = time.perf_counter() - start

        # 2. spread the change over the layers, bottom up, each on the model with the lower ones applied
        held = [(t, s) for t, s in env.kept if not any(same_subject(s, f.subject) for f in facts)] if p.null_space else []
        held += _known(p.protect_facts, facts)
        undo = AppliedDelta()
        factors: dict[str, LowRank] = {}
        layer_info = []
        try:
            for i, (layer, module) in enumerate(zip(layers, modules, strict=True)):
                keys, hidden = first if i == 0 else read_keys(model, tokenizer, module, top, facts, prefixes)
                cov, _ = key_covariance(model, tokenizer, module, corpus=env.corpus, max_tokens=p.corpus_tokens,
                                        cache=cache, base_hash=env.base_hash, also=modules)
                state = None if env.active is None else [*env.active, *(Delta({m: f}) for m, f in factors.items())]
                preserved = _preserved_keys(model, tokenizer, module, held, env, state)
                if p.corpus_rank > 0:
                    directions = corpus_directions(cov, p.corpus_rank)
                    preserved = directions if preserved is None else torch.cat([preserved, directions])
                share = (goal - hidden) / (len(layers) - i)  # (n, d_model)
                A = spread_update(cov, keys, p.mom2_weight, p.cov_reg, preserved)
                factor = LowRank(B=share.T.contiguous(), A=A)
                factors[module] = factor
                layer_info.append({"layer": layer, "residual_norm": round(float((goal - hidden).norm(dim=1).mean()), 4),
                                   "preserved_keys": 0 if preserved is None else int(preserved.shape[0])})
                applied = apply_delta(model, Delta({module: factor}))
                for name, original in applied.originals.items():
                    undo.originals.setdefault(name, original)
            _, hidden = read_keys(model, tokenizer, modules[0], top, facts, prefixes)
            left = float((goal - hidden).norm(dim=1).mean())
        finally:
            undo.remove(model)
        delta = Delta(factors, base_model=getattr(model, "name_or_path", ""))
        info = {"facts": per_fact, "layers": layer_info, "residual_left": round(left, 4),
                "target_seconds": round(target_seconds, 3), "seconds": round(time.perf_counter() - start, 3),
                "n_prefixes": len(prefixes), "kept_keys": len(held)}
        log.info("MEMIT %d fact(s) at layers %s: %s", len(facts), list(layers), info["layers"])
        return EditResult(delta=delta, site={"layers": list(layers), "modules": modules, "component": "mlp_out"},
                          info=info, data=data)


def read_keys(model: Any, tokenizer: Any, module: str, top: str, facts: Sequence[Fact],
              prefixes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per fact, averaged over ``prefix + prompt`` at the subject's last token: the input of ``module``
    (n, d_in) and the output of the decoder layer ``top`` (n, d_model), in one forward pass per batch that
    stops at ``top``."""
    import torch

    from cathrepo.lm.hooks import capture, forward_until
    from cathrepo.models import model_device

    texts = [(prefix + fact.prompt, fact.subject, i) for i, fact in enumerate(facts) for prefix in prefixes]
    sums_k: list[torch.Tensor] = []
    sums_h: list[torch.Tensor] = []
    owners: list[int] = []
    for start in range(0, len(texts), BATCH):
        chunk = texts[start : start + BATCH]
        at = torch.tensor([subject_last_index(tokenizer, t, s) for t, s, _ in chunk])
        enc = tokenizer([t for t, _, _ in chunk], return_tensors="pt", padding=True).to(model_device(model))
        rows = torch.arange(len(chunk))
        with torch.no_grad(), capture(model, [module], inputs=True, outputs=False) as seen:
            out = forward_until(model, top, inputs=False, **enc)
        sums_k.append(seen.inputs[module][rows, at.to(out.device)].float().cpu())
        sums_h.append(out[rows, at.to(out.device)].float().cpu())
        owners.extend(i for _, _, i in chunk)
    index = torch.tensor(owners)
    k, h = torch.cat(sums_k), torch.cat(sums_h)
    count = torch.bincount(index, minlength=len(facts)).float()[:, None]
    keys = torch.zeros(len(facts), k.shape[1]).index_add_(0, index, k) / count
    hidden = torch.zeros(len(facts), h.shape[1]).index_add_(0, index, h) / count
    return keys, hidden


def spread_update(cov: torch.Tensor, keys: torch.Tensor, weight: float, reg: float,
                  preserved: torch.Tensor | None = None) -> torch.Tensor:
    """``A = Kᵀ (λ (C + ρI) + K Kᵀ)⁻¹`` (n, d_in) for keys ``K`` (n rows), so that ``ΔW = B A`` with
    ``B`` the layer's share of the residuals; with ``preserved`` keys (m, d_in), the same solved inside
    their orthogonal complement (``P = I − K_p (K_pᵀ K_p)⁻¹ K_pᵀ``): ``A = (P K)ᵀ (P M P + ρλ I)⁻¹ P``, so
    ``A k_p = 0`` for every preserved key. In float64; returned in float32."""
    import torch

    c = cov.double()
    d = c.shape[0]
    ridge = reg * float(torch.trace(c)) / d
    k = keys.double().T  # (d, n)
    eye = torch.eye(d, dtype=c.dtype)
    if preserved is None or preserved.numel() == 0:
        m = weight * (c + ridge * eye) + k @ k.T
        return torch.linalg.solve(m, k).T.float()
    kp = preserved.double().T  # (d, m)
    gram = kp.T @ kp
    gram = gram + KEEP_RIDGE * torch.trace(gram) / gram.shape[0] * torch.eye(gram.shape[0], dtype=c.dtype)
    proj = eye - kp @ torch.linalg.solve(gram, kp.T)
    pk = proj @ k
    m = weight * (proj @ c @ proj) + pk @ pk.T + weight * ridge * eye
    return (torch.linalg.solve(m, pk).T @ proj).float()


def corpus_directions(cov: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank`` top eigenvectors of a key second moment as rows (rank, d), each scaled to the root of
    its trace (a typical key's norm), so they sit beside real keys in the preserved set."""
    import torch

    _, vectors = torch.linalg.eigh(cov.double())  # ascending
    return (vectors[:, -rank:].T * float(torch.trace(cov.double())) ** 0.5).float()


def _known(n: int, facts: Sequence[Fact]) -> list[tuple[str, str]]:
    """(prompt, subject) of the first ``n`` known facts of the protected half, the batch's subjects left out."""
    if n <= 0:
        return []
    from cathrepo.facts.probes import load_known_facts

    known = load_known_facts(part="protect")[:n]
    return [(k.prompt, k.subject) for k in known if not any(same_subject(k.subject, f.subject) for f in facts)]


def _preserved_keys(model: Any, tokenizer: Any, module: str, held: Sequence[tuple[str, str]], env: EditEnv,
                    state: Sequence[Delta] | None) -> torch.Tensor | None:
    """The keys of ``held`` at ``module`` on the model as it stands (None when there are none), cached per
    state of what reaches the module's input when the deltas applied (``state``) are known."""
    if not held:
        return None
    from cathrepo.edits.rome.protect import cached_subject_keys, input_state_key
    from cathrepo.models import cache_dir

    path = None
    if state is not None and env.base_hash != "unknown":
        key = input_state_key(model, env.base_hash, state, module)
        path = stats_dir(env.cache_dir or cache_dir(), env.base_hash) / module / "kept" / f"{key[:32]}.safetensors"
    return cached_subject_keys(model, tokenizer, module, list(held), path=path)
