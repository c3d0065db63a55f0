"""ROME's value side: the change ``δ`` of the projection's output that makes the model say the target.

Optimises ``δ`` added to the output of the edited module at the subject's last token (ROME §3.1, eq. 4):

    L(δ) = mean_j NLL(target | prefix_j + prompt)                  (rewrite, over all context prefixes)
         + kl_factor · KL(P₀(· | "{subject} is a") ‖ P_δ(·))        (essence drift)
         + v_weight_decay · ‖δ‖² / ‖v₀‖²                             (keep the change small)

with ‖δ‖ clamped to ``clamp_norm_factor · ‖v₀‖`` after each Adam step, where v₀ is the module's
original output on the bare prompt. Stops early once the rewrite NLL is below ``v_stop_nll``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.facts.schema import Fact
from cathrepo.facts.tokens import subject_last_index

if TYPE_CHECKING:
    import torch

    from cathrepo.edits.rome.params import RomeParams


@dataclass(frozen=True)
class ValueResult:
    """The optimised output change and how the optimisation went."""

    delta: torch.Tensor  # (d_out,)
    steps: int
    nll_start: float
    nll_end: float
    kl_end: float
    norm_ratio: float  # ‖δ‖ / ‖v₀‖


def _batch(tokenizer: Any, fact: Fact, target_ids: list[int], prefixes: Sequence[str]) -> dict[str, Any]:
    """Rows aligned so every subject-last token sits in one column ``P``.

    Tokens before the subject's last token cannot see δ, so their keys and values are computed once
    (a KV cache of the left-padded "prefix" part) and each optimisation step only runs the short
    "suffix" from the subject's last token to the end of the target: several times less work.
    """
    import torch

    rewrite = [prefix + fact.prompt for prefix in prefixes]
    essence = f"{fact.subject} is a"
    prompt_ids = [list(tokenizer(t)["input_ids"]) for t in rewrite]
    seqs = [ids + target_ids[:-1] for ids in prompt_ids] + [list(tokenizer(essence)["input_ids"])]
    lookups = [subject_last_index(tokenizer, t, fact.subject) for t in [*rewrite, essence]]
    width_p = max(lookups)
    width_s = max(len(s) - at for s, at in zip(seqs, lookups, strict=True))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(seqs)
    prefix_ids = torch.full((n, width_p), pad, dtype=torch.long)
    suffix_ids = torch.full((n, width_s), pad, dtype=torch.long)
    mask = torch.zeros((n, width_p + width_s), dtype=torch.long)
    prefix_pos = torch.zeros((n, width_p), dtype=torch.long)
    suffix_pos = torch.zeros((n, width_s), dtype=torch.long)
    for i, (seq, at) in enumerate(zip(seqs, lookups, strict=True)):
        head, tail = seq[:at], seq[at:]
        if head:
            prefix_ids[i, width_p - at :] = torch.tensor(head)
            prefix_pos[i, width_p - at :] = torch.arange(at)
        mask[i, width_p - at : width_p + len(tail)] = 1
        suffix_ids[i, : len(tail)] = torch.tensor(tail)
        suffix_pos[i] = torch.arange(at, at + width_s)
    rows, positions, tokens = [], [], []  # suffix coordinates predicting each target token
    for i, p in enumerate(prompt_ids):
        for j, tok in enumerate(target_ids):
            rows.append(i)
            positions.append(len(p) - 1 + j - lookups[i])
            tokens.append(tok)
    return {
        "prefix_ids": prefix_ids,
        "suffix_ids": suffix_ids,
        "mask": mask,
        "prefix_pos": prefix_pos,
        "suffix_pos": suffix_pos,
        "rows": torch.tensor(rows),
        "positions": torch.tensor(positions),
        "tokens": torch.tensor(tokens),
        "n_rewrite": len(rewrite),
        "n_target": len(target_ids),
    }


def _prefix_cache(model: Any, b: dict[str, Any]) -> Any:
    """KV cache of the prefix columns (no gradient: δ cannot reach them)."""
    import torch

    from cathrepo.models import output_cache

    width_p = b["prefix_ids"].shape[1]
    if width_p == 0:
        return None
    with torch.no_grad():
        out = model(
            input_ids=b["prefix_ids"],
            attention_mask=b["mask"][:, :width_p],
            position_ids=b["prefix_pos"],
            use_cache=True,
        )
    return output_cache(out)


def _read_logprobs(model: Any, split: Any, b: dict[str, Any], cache: Any) -> torch.Tensor:
    """Log-probabilities at the positions the loss reads: each target token's, then the essence row's.

    With the model split into body and head, the vocabulary projection runs only at those positions.
    """
    import torch

    from cathrepo.models import cache_kwargs

    runner = split[0] if split else model
    out = runner(
        input_ids=b["suffix_ids"],
        attention_mask=b["mask"],
        position_ids=b["suffix_pos"],
        **(cache_kwargs(runner, copy.deepcopy(cache)) if cache is not None else {}),
    )
    states = out.last_hidden_state if split else out.logits  # (batch, suffix, d_model or vocab)
    last = states.shape[0] - 1
    picked = torch.cat([states[b["rows"], b["positions"]], states[last, :1]], dim=0)
    logits = split[1](picked) if split else picked
    return torch.log_softmax(logits.float(), dim=-1)


def working_copy(model: Any, precision: str) -> Any:
    """The model to optimise on: itself, or a bfloat16 copy of its current weights (active deltas
    included) where bfloat16 matmuls are faster. δ stays float32; the gates judge the float32 result."""
    import copy as copying

    import torch

    from cathrepo.attribution.causal_trace import bf16_is_fast
    from cathrepo.models import model_device

    use_bf16 = precision == "bfloat16" or (precision == "auto" and bf16_is_fast(model_device(model)))
    if not use_bf16 or next(model.parameters()).dtype == torch.bfloat16:
        return model
    return copying.deepcopy(model).to(torch.bfloat16)


def optimise_value(
    model: Any,
    tokenizer: Any,
    module: str,
    fact: Fact,
    target_ids: list[int],
    prefixes: Sequence[str],
    params: RomeParams,
) -> ValueResult:
    """Find δ (1-D, the module's output width) as described in the module docstring."""
    import torch

    from cathrepo.attribution.hooks import edit_output
    from cathrepo.models import hidden_and_head, model_device

    model = working_copy(model, params.precision)
    device = model_device(model)
    b = {k: v.to(device) if hasattr(v, "to") else v for k, v in _batch(tokenizer, fact, target_ids, prefixes).items()}
    cache = _prefix_cache(model, b)
    split = hidden_and_head(model)
    state: dict[str, Any] = {}
    delta: torch.Tensor | None = None

    def add_delta(out: torch.Tensor) -> torch.Tensor:  # out: (batch, suffix, d_out); column 0 = subject
        nonlocal delta
        if "v0" not in state:
            state["v0"] = out[0, 0].detach().float()
        if delta is None:
            delta = torch.zeros(out.shape[-1], device=device, requires_grad=True)
        return torch.cat([(out[:, :1] + delta).to(out.dtype), out[:, 1:]], dim=1)

    optimizer: torch.optim.Optimizer | None = None
    nll_start = nll = kl = float("nan")
    steps = 0
    with edit_output(model, {module: add_delta}), torch.enable_grad():
        for step in range(params.v_steps + 1):
            logp = _read_logprobs(model, split, b, cache)  # (n_rewrite * n_target + 1, vocab)
            token_lp = logp[:-1].gather(1, b["tokens"][:, None]).squeeze(1)
            nll_t = -token_lp.view(b["n_rewrite"], b["n_target"]).mean(1).mean()
            essence = logp[-1]
            if "p0" not in state:
                state["p0"] = essence.detach()
            kl_t = torch.nn.functional.kl_div(essence, state["p0"], log_target=True, reduction="sum")
            assert delta is not None
            v0_norm2 = state["v0"].norm() ** 2
            loss = nll_t + params.kl_factor * kl_t + params.v_weight_decay * delta.norm() ** 2 / v0_norm2
            nll, kl = float(nll_t.detach()), float(kl_t.detach())
            if step == 0:
                nll_start = nll
                optimizer = torch.optim.Adam([delta], lr=params.v_lr)
            if nll < params.v_stop_nll or step == params.v_steps:
                break
            assert optimizer is not None
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            with torch.no_grad():
                limit = params.clamp_norm_factor * state["v0"].norm()
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
    assert delta is not None
    final = delta.detach().clone()
    return ValueResult(final, steps, nll_start, nll, kl, float(final.norm() / state["v0"].norm()))
