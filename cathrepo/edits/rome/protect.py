"""Preserved keys: inputs of the edited projection that a ROME update must leave alone.

ROME's update direction ``u = C⁻¹ k*`` already minimises the mean disturbance of the corpus keys ``C``
(Meng et al. 2022, eq. 2). But most corpus tokens are not subjects, so ``C`` says little about the keys
that matter most: the last tokens of *other subjects*, which carry what the model knows about them.
An update that fires on them changes their facts (the neighbourhood, retention) and, read after the
edited sentence, makes them take the new answer (CounterFact+'s NS+).

Following AlphaEdit (Fang et al., ICLR 2025), which projects each update onto the null space of the keys
to preserve, the preserved keys join the corpus statistics with a weight:

    C' = C + w · (tr C / tr P) · P,     P = mean_j k_j k_jᵀ

so ``u = (C' + λI)⁻¹ k*`` turns away from every preserved key in proportion to ``w``. (This model's key
covariance has no exact null space, its spectrum falls smoothly over three orders of magnitude, so the
soft form of the projection is used.) The preserved keys are:

- the last subject token of the known facts of the *protected* half of the known-facts file (the gates
  measure the other half, so no gate scores a fact the editor was told to protect); they are the same
  for every edit and cached per base model, module and file;
- other subjects of the same half in the relation's phrasings, read after the edited sentence
  (``"{prompt} {target}. The mother tongue of {other} is"``), computed per edit.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.delta import Delta, deltas_digest
from cathrepo.facts.probes import KnownFact, stated
from cathrepo.facts.schema import Fact
from cathrepo.facts.templates import fill, infer_relations, paraphrase_templates
from cathrepo.lm.tokens import subject_last_index

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BATCH = 32


def subject_keys(model: Any, tokenizer: Any, module: str, prompts: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Inputs of ``module`` at each (prompt, subject)'s last subject token: (n, d_in) float32."""
    import torch

    from cathrepo.lm.hooks import forward_until
    from cathrepo.models import model_device

    rows = []
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        texts = [p for p, _ in chunk]
        at = torch.tensor([subject_last_index(tokenizer, p, s) for p, s in chunk])
        enc = tokenizer(texts, return_tensors="pt", padding=True).to(model_device(model))
        with torch.no_grad():
            keys = forward_until(model, module, inputs=True, **enc)  # (batch, seq, d_in), right-padded
        rows.append(keys[torch.arange(len(chunk)), at.to(keys.device)].float().cpu())
    return torch.cat(rows) if rows else torch.zeros(0)


def input_state_key(model: Any, base_hash: str, deltas: Sequence[Delta], module: str) -> str:
    """A content key of everything that reaches ``module``'s input: the base, the dtype, the device, the
    torch and transformers versions, and the parts of ``deltas`` in the decoder layers up to the one
    holding ``module`` (``module`` itself excepted) or outside the decoder layers. A delta written to
    ``module`` or above it leaves the key, and every key vector read there, unchanged."""
    from cathrepo.lm.replay import block_of, decoder_layers, model_state_key

    blocks = decoder_layers(model)
    layer = block_of(blocks, module)

    def reaches(name: str) -> bool:
        if name == module:
            return False
        block = block_of(blocks, name)
        return block is None or layer is None or block <= layer

    return deltas_digest(f"{model_state_key(model, base_hash)}:{module}", deltas, reaches)


def cached_subject_keys(model: Any, tokenizer: Any, module: str, prompts: Sequence[tuple[str, str]], *,
                        path: Path | None, keep_files: int = 4) -> torch.Tensor:
    """:func:`subject_keys`, read from and added to ``path``: one safetensors file per model state as
    :func:`input_state_key` names it, one vector per (prompt, subject). The ``keep_files`` most recent
    files of its folder are kept (older states are rarely met again; a missing file is recomputed)."""
    import torch

    if path is None or not prompts:
        return subject_keys(model, tokenizer, module, prompts)
    from safetensors.torch import load_file, save

    from cathrepo.files import atomic_write

    names = [hashlib.sha256(f"{p}\0{s}".encode()).hexdigest()[:32] for p, s in prompts]
    stored: dict[str, torch.Tensor] = {}
    if path.is_file():
        try:
            stored = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
            log.warning("Recomputing the key cache %s: %s", path, exc)
    missing = {n: pair for n, pair in zip(names, prompts, strict=True) if n not in stored}
    if missing:
        fresh = subject_keys(model, tokenizer, module, list(missing.values()))
        stored.update({n: fresh[i].contiguous() for i, n in enumerate(missing)})
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, save(stored))
        older = sorted((p for p in path.parent.glob("*.safetensors") if p != path), key=lambda p: p.stat().st_mtime)
        for stale in older[: max(0, len(older) - keep_files + 1)]:
            stale.unlink(missing_ok=True)
    return torch.stack([stored[n] for n in names])


def known_subject_keys(model: Any, tokenizer: Any, module: str, facts: Sequence[KnownFact], *,
                       cache: Path | None) -> torch.Tensor:
    """:func:`subject_keys` of the known facts' prompts, cached in ``cache`` (a stats directory)."""
    from safetensors.torch import load_file, save

    digest = hashlib.sha256("\0".join(f"{f.prompt}\0{f.subject}" for f in facts).encode()).hexdigest()[:16]
    path = cache / module / f"protect-{digest}-{len(facts)}.safetensors" if cache else None
    if path is not None and path.is_file():
        return load_file(str(path))["keys"]
    keys = subject_keys(model, tokenizer, module, [(f.prompt, f.subject) for f in facts])
    if path is not None:
        from cathrepo.files import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, save({"keys": keys.contiguous()}))
    return keys


def context_prompts(fact: Fact, others: Sequence[KnownFact], n: int) -> list[tuple[str, str]]:
    """``n`` (prompt, subject) pairs: another subject in a phrasing of the relation, after the edited
    sentence. The subjects come from ``others`` (the protected half), in a stable order per fact."""
    relations = (fact.relation_id,) if fact.relation_id else infer_relations(fact.template)
    templates = paraphrase_templates(relations) or [fact.template]
    sentence = stated(fact.prompt, fact.target_new)

    def rank(k: KnownFact) -> str:
        return hashlib.sha256(f"{fact.subject}\0{k.subject}".encode()).hexdigest()

    chosen = [k for k in sorted(others, key=rank) if k.subject not in fact.prompt and fact.subject not in k.subject]
    return [(sentence + fill(templates[i % len(templates)], k.subject), k.subject)
            for i, k in enumerate(chosen[:n])]


def preserved_moment(cov: torch.Tensor, keys: torch.Tensor, weight: float) -> torch.Tensor | None:
    """``w · (tr C / tr P) · P`` with ``P = mean k kᵀ`` over ``keys`` (n, d); None when there is none."""
    if weight <= 0 or keys.numel() == 0:
        return None
    k = keys.double()
    moment = k.T @ k / k.shape[0]  # (d, d)
    return (weight * float(cov.double().trace()) / float(moment.trace())) * moment
