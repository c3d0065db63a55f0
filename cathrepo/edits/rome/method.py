"""ROME: a rank-one update of one MLP output projection (Meng et al. 2022), r-ROME consistent.

    ΔW = δ uᵀ / (u · k*),   u = (C + λI)⁻¹ k*

so that ``ΔW k* = δ`` exactly: the projection's output at the subject's (prefix-averaged) key moves by
the optimised δ, and inputs orthogonal to ``u`` in the covariance metric barely move. The result is a
rank-one :class:`~cathrepo.delta.LowRank` with ``B = δ/(u·k*)`` (out×1) and ``A = uᵀ`` (1×in).

With ``keep_active`` (the default) ``u`` also satisfies ``u · k_j = 0`` at the keys of the edits already
active (:attr:`~cathrepo.edits.base.EditEnv.kept`), so a new edit of the same relation does not move
the earlier answers (AlphaEdit's preserved keys, held exactly; :func:`~cathrepo.edits.rome.key.update_direction`).

Several facts are edited one after another, each computed on the model with the earlier ones applied
(as a repository would), and returned as one delta whose per-module factors are concatenated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cathrepo.delta import AppliedDelta, Delta, LowRank, apply_delta
from cathrepo.edits.base import EDIT_METHODS, EditEnv, EditMethod, EditResult, RetryVariant, require_writes
from cathrepo.edits.rome.context import context_prefixes
from cathrepo.edits.rome.covariance import key_covariance, stats_dir
from cathrepo.edits.rome.key import key_vector, update_direction
from cathrepo.edits.rome.params import FAMILY_DEFAULTS, RomeParams
from cathrepo.edits.rome.protect import (
    cached_subject_keys,
    context_prompts,
    input_state_key,
    known_subject_keys,
    preserved_moment,
    subject_keys,
)
from cathrepo.edits.rome.rows import rewrite_rows
from cathrepo.edits.rome.value import optimise_value
from cathrepo.exceptions import EditFailedError, InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.facts.templates import fill, infer_relations, split_templates

log = logging.getLogger(__name__)


@EDIT_METHODS.register
class RomeMethod(EditMethod):
    """Rank-One Model Editing of the family's MLP output projection."""

    name = "rome"
    params_cls = RomeParams
    #: Tuned on CounterFact records 5030-5069 (BENCHMARKS.md): of the edits refused at the default layer,
    #: a weaker stop rescued those that harmed fluency or known facts, and the context KL those whose
    #: neighbours took the target. Since the smallest value is the default (records 5600-5619), Adam's
    #: value (the default before it, phrasings in its loss) is the first retry of any refusal: each passed
    #: first attempts the other refused (3 and 5 of 20). Before it, an NS+ refusal is retried with the
    #: smallest value that caps the target after other subjects (``context_cap``: seconds, where
    #: ``context_kl``, which rescued most NS+ refusals on acceptance records 50-99 and tuning records
    #: 5800-5809, takes Adam's 17-44 s).
    retry_variants = (
        RetryVariant("capped", {"context_cap": 0.5, "context_subjects": 4}, frozenset({"cfplus"})),
        RetryVariant("adam", {"v_solver": "adam", "phrasing_stop": False}, frozenset({
            "efficacy", "paraphrase", "generation", "fluency", "retention", "neighborhood", "norms", "cfplus"})),
        RetryVariant("gentler", {"v_stop_prob": 0.3}, frozenset({"fluency", "retention", "neighborhood", "norms"})),
        RetryVariant("context_kl", {"context_kl": 1.0, "context_subjects": 2, "v_solver": "adam"},
                     frozenset({"cfplus", "fluency"})),  # a loss term: only Adam's optimisation reads it
    )

    @classmethod
    def default_params(cls, model: Any) -> RomeParams:
        from cathrepo.models import default_edit_layer, family_for

        family = family_for(model)
        return RomeParams(layer=default_edit_layer(model), **FAMILY_DEFAULTS.get(family.name, {}))

    def compute(self, model: Any, tokenizer: Any, facts: Sequence[Fact], env: EditEnv) -> EditResult:
        from cathrepo.models import cache_dir, default_edit_layer, family_for, get_module, num_layers

        require_writes(facts, "ROME")
        params: RomeParams = self.params
        family = family_for(model)
        layer = default_edit_layer(model) if params.layer is None else params.layer
        if layer >= num_layers(model):
            raise InvalidInputError(
                f"ROME layer {layer} does not exist; the model has {num_layers(model)} layers.",
                hint=f"Pass a layer between 0 and {num_layers(model) - 1}.",
            )
        module = family.layer_name(params.module, layer)
        get_module(model, module)
        cache = env.cache_dir or cache_dir()
        center = default_edit_layer(model)
        near = [family.layer_name(params.module, j) for j in range(max(0, center - 3), min(num_layers(model), center + 4))]
        cov, stats = key_covariance(
            model, tokenizer, module, corpus=env.corpus, max_tokens=params.corpus_tokens,
            cache=cache, base_hash=env.base_hash, also=near,
        )
        prefixes = context_prefixes(
            model, tokenizer, params.n_context, params.context_tokens, params.seed,
            stats_dir(cache, env.base_hash),
        )
        protected = self._protected(model, tokenizer, module, stats_dir(cache, env.base_hash))
        keys_file = None  # the active edits' keys, cached per state of what reaches the module's input
        if env.active is not None and env.base_hash != "unknown":
            state = input_state_key(model, env.base_hash, env.active, module)
            keys_file = stats_dir(cache, env.base_hash) / module / "kept" / f"{state[:32]}.safetensors"
        undo = AppliedDelta()
        factors: list[LowRank] = []
        per_fact: list[dict[str, Any]] = []
        data: list[dict[str, Any]] = []
        try:
            kept = list(env.kept)
            for fact in facts:
                factor, info = self._one(model, tokenizer, module, fact, prefixes, cov, protected, kept, keys_file)
                kept.append((fact.prompt, fact.subject))
                factors.append(factor)
                per_fact.append(info)
                data.extend(training_rows(fact, prefixes, info["phrasings"], self.params.phrasing_prefixes))
                if len(facts) > 1:  # later facts see the earlier edits, as in a repository
                    applied = apply_delta(model, Delta({module: factor}))
                    for name, original in applied.originals.items():
                        undo.originals.setdefault(name, original)
        finally:
            undo.remove(model)
        delta = Delta({module: _concat(factors)}, base_model=getattr(model, "name_or_path", ""))
        return EditResult(
            delta=delta,
            site={"layers": [layer], "modules": [module], "component": params.module},
            info={"facts": per_fact, "stats": stats, "n_prefixes": len(prefixes)},
            data=data,
        )

    def _protected(self, model: Any, tokenizer: Any, module: str, cache: Any) -> tuple[Any, list[Any]]:
        """(keys of the protected known facts' subjects or None, those facts) as the params ask."""
        from cathrepo.facts.probes import load_known_facts

        p: RomeParams = self.params
        if p.protect_weight <= 0 and not p.reads_context:
            return None, []
        facts = load_known_facts(part="protect")
        if p.protect_weight <= 0:
            return None, facts
        return known_subject_keys(model, tokenizer, module, facts[: p.protect_facts], cache=cache), facts

    def _one(
        self, model: Any, tokenizer: Any, module: str, fact: Fact, prefixes: list[str], cov: Any,
        protected: tuple[Any, list[Any]], kept: Sequence[tuple[str, str]] = (), keys_file: Path | None = None,
    ) -> tuple[LowRank, dict[str, Any]]:
        import torch

        from cathrepo.lm.tokens import continuation_ids

        p: RomeParams = self.params
        start = time.perf_counter()
        target_ids = continuation_ids(tokenizer, fact.target_new)
        # min_norm reads the phrasings only as constraints (phrasing_stop); otherwise they would cost rows for nothing
        # the formats a forget holds first: when the norm bound lets the phrasings go, they stay judged
        formats = [w.replace("{prompt}", fact.prompt) for w in p.wrappers]
        phrasings = formats + (relation_phrasings(fact, p.phrasings) if p.v_solver == "adam" or p.phrasing_stop else [])
        worded = [fact.prompt, *phrasings] if p.key_phrasings else [fact.prompt]
        key = torch.stack([key_vector(model, tokenizer, module, w, fact.subject, prefixes) for w in worded]).mean(0)
        keys, pool = protected
        preserved = None
        if keys is not None:
            extra = subject_keys(model, tokenizer, module, context_prompts(fact, pool, p.protect_context))
            preserved = preserved_moment(cov, torch.cat([keys, extra]) if extra.numel() else keys, p.protect_weight)
        held = [(t, s) for t, s in kept if not same_subject(s, fact.subject)] if p.keep_active else []
        held_keys = cached_subject_keys(model, tokenizer, module, held, path=keys_file) if held else None
        u = update_direction(cov, key, p.cov_reg, preserved, held_keys)
        context = [t for t, _ in context_prompts(fact, pool, p.context_subjects)] if p.reads_context else []
        denom = float(u @ key)
        reader = u / denom if p.through_weight and abs(denom) >= 1e-8 else None
        value = optimise_value(model, tokenizer, module, fact, target_ids, prefixes, p, phrasings, context, reader,
                               held=len(formats))
        if abs(denom) < 1e-8 or not value.delta.isfinite().all():
            raise EditFailedError(f"ROME found no usable update for '{fact.prompt}' (u·k = {denom:.2e}).")
        factor = LowRank(B=(value.delta / denom).unsqueeze(1).cpu(), A=u.unsqueeze(0).cpu())
        info = {
            "steps": value.steps,
            "nll_start": round(value.nll_start, 4),
            "nll_end": round(value.nll_end, 4),
            "kl_end": round(value.kl_end, 5),
            "delta_norm_ratio": round(value.norm_ratio, 4),
            "stopped": value.stopped,
            "relaxed": value.relaxed,
            "phrasings": phrasings,
            "kept_keys": len(held),
            "seconds": round(time.perf_counter() - start, 3),
        }
        log.info("ROME %s -> %s: %s", fact.prompt, fact.target_new, info)
        return factor, info


def same_subject(a: str, b: str) -> bool:
    """Whether two subjects name the same thing closely enough that holding one's key would hold the
    other's (an earlier edit of the same subject is not held: its key is the new edit's own)."""
    a, b = a.strip().lower(), b.strip().lower()
    return a in b or b in a


def relation_phrasings(fact: Fact, n: int) -> list[str]:
    """Up to ``n`` other wordings of the fact's prompt: relation templates the probes leave out."""
    if n <= 0:
        return []
    relations = (fact.relation_id,) if fact.relation_id else infer_relations(fact.template)
    _, train = split_templates(relations, exclude=fact.template)
    return [fill(t, fact.subject) for t in train[:n]]


def _concat(factors: list[LowRank]) -> LowRank:
    import torch

    if len(factors) == 1:
        return factors[0]
    return LowRank(torch.cat([f.B for f in factors], dim=1), torch.cat([f.A for f in factors], dim=0))


def training_rows(fact: Fact, prefixes: list[str], phrasings: Sequence[str] = (),
                   phrasing_prefixes: int = -1) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"role": "rewrite", "prompt": text, "target": fact.target_new}
        for text in rewrite_rows(prefixes, [fact.prompt, *phrasings], phrasing_prefixes)
    ]
    rows.append({"role": "essence", "prompt": f"{fact.subject} is a", "target": None})
    return rows
