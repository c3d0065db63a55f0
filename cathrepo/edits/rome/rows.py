"""The rows ROME's value is optimised on, and how a pass reads them (shared by both solvers).

The rewrite rows (the prompt under every context prefix, then each phrasing), the KL rows after them,
aligned so every subject-last token sits in one column; the KV cache of what δ cannot reach; the
log-probabilities a pass reads; the hook that adds δ to the edited module's output; the stopping rule
and the result. :func:`~cathrepo.edits.rome.value.optimise_value` (Adam) and
:func:`~cathrepo.edits.rome.min_norm.solve_min_norm` both run on them.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.facts.schema import Fact
from cathrepo.lm.tokens import continuation_ids, subject_last_index

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
    stopped: bool = False  # the stopping rule was met (not the step budget)
    relaxed: bool = False  # min_norm let the phrasings go: the norm bound could not hold them to the bar


def rewrite_rows(prefixes: Sequence[str], prompts: Sequence[str], phrasing_prefixes: int = -1) -> list[str]:
    """The texts the value is optimised on: the first prompt under every prefix, each further prompt (a
    phrasing) under the first ``phrasing_prefixes + 1`` prefixes (the bare one first; -1: all of them)."""
    keep = phrasing_rows(prefixes, phrasing_prefixes)
    return [prefix + prompt for i, prompt in enumerate(prompts) for prefix in (prefixes if i == 0 else prefixes[:keep])]


def phrasing_rows(prefixes: Sequence[str], phrasing_prefixes: int) -> int:
    """How many rows each phrasing gets: the bare wording and its first ``phrasing_prefixes`` prefixes."""
    return len(prefixes) if phrasing_prefixes < 0 else min(len(prefixes), phrasing_prefixes + 1)


def batch_rows(tokenizer: Any, fact: Fact, target_ids: list[int], prefixes: Sequence[str],
           prompts: Sequence[str], context: Sequence[str] = (), phrasing_prefixes: int = -1,
           held: int = 0) -> dict[str, Any]:
    """Rows aligned so every subject-last token sits in one column ``P``.

    The first ``held`` prompts after the first (a forget's formats) are judged with the prompt itself:
    they count in ``n_prompt``, the leading rows the stopping rule never lets go.

    Tokens before the subject's last token cannot see δ, so their keys and values are computed once
    (a KV cache of the left-padded "prefix" part) and each optimisation step only runs the short
    "suffix" from the subject's last token to the end of the target: several times less work.
    """
    import torch

    rewrite = rewrite_rows(prefixes, prompts, phrasing_prefixes)
    essence = f"{fact.subject} is a"
    prompt_ids = [list(tokenizer(t)["input_ids"]) for t in rewrite]
    seqs = [ids + target_ids[:-1] for ids in prompt_ids] + [list(tokenizer(t)["input_ids"]) for t in [essence, *context]]
    lookups = [subject_last_index(tokenizer, t, fact.subject) for t in [*rewrite, essence, *context]]
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
    # KL rows: the essence row read at the subject (ROME), each context row at its last token
    kl_rows = list(range(len(rewrite), n))
    kl_cols = [0] + [len(seqs[i]) - 1 - lookups[i] for i in kl_rows[1:]]
    return {
        "kl_rows": torch.tensor(kl_rows),
        "kl_cols": torch.tensor(kl_cols),
        "prefix_ids": prefix_ids,
        "suffix_ids": suffix_ids,
        "mask": mask,
        "prefix_pos": prefix_pos,
        "suffix_pos": suffix_pos,
        "rows": torch.tensor(rows, dtype=torch.long),
        "positions": torch.tensor(positions, dtype=torch.long),
        "tokens": torch.tensor(tokens, dtype=torch.long),
        "n_rewrite": len(rewrite),
        # the first rows: the prompt itself under every prefix, then the held prompts' rows
        "n_prompt": len(prefixes) + held * phrasing_rows(prefixes, phrasing_prefixes),
        "n_target": len(target_ids),
        "away": None,  # the old answer's first token, set by the value optimisation when it pushes it down
    }


def prefix_cache(model: Any, b: dict[str, Any]) -> Any:
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


def read_logprobs(model: Any, split: Any, b: dict[str, Any], cache: Any,
                  lower: tuple[Sequence[str], dict[str, Any]] | None = None) -> torch.Tensor:
    """Log-probabilities at the positions the loss reads: each target token's, then each KL row's.

    With the model split into body and head, the vocabulary projection runs only at those positions.
    With ``lower`` (the layers below the edited one, from :func:`~cathrepo.lm.replay.layers_below`, and a store), those
    layers run on the first call only and replay their outputs afterwards: the rows and the prefix cache
    are the same on every pass and δ enters above them (at layer 6 of 30, six layers of each forward).
    """
    import torch

    from cathrepo.lm.hooks import replayed
    from cathrepo.models import cache_kwargs

    runner = split[0] if split else model
    with replayed(model, *lower) if lower is not None else contextlib.nullcontext():
        out = runner(
            input_ids=b["suffix_ids"],
            attention_mask=b["mask"],
            position_ids=b["suffix_pos"],
            **(cache_kwargs(runner, copy.deepcopy(cache)) if cache is not None else {}),
        )
    states = out.last_hidden_state if split else out.logits  # (batch, suffix, d_model or vocab)
    picked = torch.cat([states[b["rows"], b["positions"]], states[b["kl_rows"], b["kl_cols"]]], dim=0)
    logits = split[1](picked) if split else picked
    return torch.log_softmax(logits.float(), dim=-1)


def stop_reached(params: RomeParams, row_lp: Sequence[float], top1: Sequence[bool], nll: float,
                 n_prompt: int, first_lp: Sequence[float] = (), away_lp: Sequence[float] = ()) -> bool:
    """The stopping rule: every judged row (the prompt's first ``n_prompt``, and the phrasings' unless
    ``phrasing_stop`` is off) gives the target ``v_stop_prob`` (with ``v_stop_top1``, as its most likely
    first token too; with ``v_stop_first``, its first token, log-probability ``first_lp``, at least that
    probability); with ``v_stop_prob`` 0, the mean NLL over every row is under ``v_stop_nll``. With
    ``away_prob``, every judged row must also give the old answer's first token (``away_lp``) at most that."""
    judged = slice(None) if params.phrasing_stop else slice(0, n_prompt)
    if away_lp and max(away_lp[judged]) > math.log(params.away_prob):
        return False
    if params.v_stop_prob <= 0:
        return nll < params.v_stop_nll
    if min(row_lp[judged]) < math.log(params.v_stop_prob):
        return False
    if params.v_stop_first > 0 and first_lp and min(first_lp[judged]) < math.log(params.v_stop_first):
        return False
    return all(top1[judged]) if params.v_stop_top1 else True


def away_token(tokenizer: Any, fact: Fact, target_ids: list[int], away_prob: float) -> int | None:
    """The old answer's first token that ``away_prob`` pushes down (None: off, no old answer, or it starts
    the way the new target does, where pushing one down would push the other too)."""
    if away_prob <= 0 or not fact.target_true:
        return None
    token = continuation_ids(tokenizer, fact.target_true)[0]
    return None if token == target_ids[0] else int(token)


def away_logprobs(logp: torch.Tensor, b: dict[str, Any]) -> torch.Tensor | None:
    """Each rewrite row's log-probability of the old answer's first token where the target begins."""
    if b.get("away") is None:
        return None
    n_kl = len(b["kl_rows"])
    return logp[:-n_kl].view(b["n_rewrite"], b["n_target"], -1)[:, 0, b["away"]]


def output_width(model: Any, module: str) -> int:
    """The edited projection's output width: the length of δ."""
    from cathrepo.models import get_module, weight_shape

    return weight_shape(get_module(model, module))[0]


def value_hook(state: dict[str, Any], value: Callable[[], torch.Tensor],
               reader: torch.Tensor | None) -> Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]:
    """The edited module's output plus ``value()`` (δ, shape (d_out,), or one δ per batch row, (batch,
    d_out)), with the unedited output at the first row's subject token kept as ``state["v0"]``.

    With ``reader`` every position moves by ``(k_t·reader) δ`` for its own key, as the rank-one weight
    delivers it; without, δ is added at the subject's last token (suffix column 0) only.
    """
    import torch

    def add(inp: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:  # out: (batch, suffix, d_out)
        if "v0" not in state:
            state["v0"] = out[0, 0].detach().float()
        delta = value()
        delta = delta if delta.dim() == 1 else delta[:, None, :]
        if reader is not None and inp is not None:
            gain = inp.float() @ reader.to(out.device)  # (batch, suffix): how strongly each position reads δ
            return (out + gain[..., None] * delta).to(out.dtype)
        return torch.cat([(out[:, :1] + delta).to(out.dtype), out[:, 1:]], dim=1)

    return add
