"""ROME's value side: the change ``δ`` of the projection's output that makes the model say the target.

Optimises ``δ`` added to the output of the edited module at the subject's last token (ROME §3.1, eq. 4):

    L(δ) = mean_j NLL(target | prefix_j + prompt_i)                (rewrite, every prefix × phrasing)
         + kl_factor · KL(P₀(· | "{subject} is a") ‖ P_δ(·))        (essence drift)
         + context_kl · mean_c KL(P₀(· | c) ‖ P_δ(· | c))           (bleed: c = the edit, then another subject)
         + after_kl · KL(P₀(· | prompt + target) ‖ P_δ(·))          (what follows the answer: no repeating it)
         + v_weight_decay · ‖δ‖² / ‖v₀‖²                             (keep the change small)

with ‖δ‖ clamped to ``clamp_norm_factor · ‖v₀‖`` after each Adam step, where v₀ is the module's
original output on the bare prompt. Stops early once the rewrite NLL is below ``v_stop_nll`` or, with
``v_stop_prob``, once every rewrite row gives the target at least that (length-normalised) probability
(with ``v_stop_top1``, and the target's first token is every row's most likely next token):
an edit stops where the model says the fact, instead of driving it to certainty (a target every prompt
already gives with that probability stops at once, with δ = 0).

That is ``v_solver`` "adam". The default, "min_norm" (:func:`_min_norm`), meets the same stopping rule
with the smallest δ instead of walking Adam's path until it is met: the loss terms above (KL, weight
decay) are then not read, the bar and the norm bound are.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.facts.schema import Fact
from cathrepo.lm.precision import cast_copy
from cathrepo.lm.tokens import subject_last_index

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
    keep = len(prefixes) if phrasing_prefixes < 0 else min(len(prefixes), phrasing_prefixes + 1)
    return [prefix + prompt for i, prompt in enumerate(prompts) for prefix in (prefixes if i == 0 else prefixes[:keep])]


def _batch(tokenizer: Any, fact: Fact, target_ids: list[int], prefixes: Sequence[str],
           prompts: Sequence[str], context: Sequence[str] = (), phrasing_prefixes: int = -1) -> dict[str, Any]:
    """Rows aligned so every subject-last token sits in one column ``P``.

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
        "rows": torch.tensor(rows),
        "positions": torch.tensor(positions),
        "tokens": torch.tensor(tokens),
        "n_rewrite": len(rewrite),
        "n_prompt": len(prefixes),  # the first rows: the prompt itself under every prefix
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
    """Log-probabilities at the positions the loss reads: each target token's, then each KL row's.

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
    picked = torch.cat([states[b["rows"], b["positions"]], states[b["kl_rows"], b["kl_cols"]]], dim=0)
    logits = split[1](picked) if split else picked
    return torch.log_softmax(logits.float(), dim=-1)


def stop_reached(params: RomeParams, row_lp: Sequence[float], top1: Sequence[bool], nll: float,
                 n_prompt: int) -> bool:
    """The stopping rule: every judged row (the prompt's first ``n_prompt``, and the phrasings' unless
    ``phrasing_stop`` is off) gives the target ``v_stop_prob`` (with ``v_stop_top1``, as its most likely
    first token too); with ``v_stop_prob`` 0, the mean NLL over every row is under ``v_stop_nll``."""
    if params.v_stop_prob <= 0:
        return nll < params.v_stop_nll
    judged = slice(None) if params.phrasing_stop else slice(0, n_prompt)
    if min(row_lp[judged]) < math.log(params.v_stop_prob):
        return False
    return all(top1[judged]) if params.v_stop_top1 else True


def working_copy(model: Any, precision: str) -> Any:
    """The model to optimise on: itself (float32), or a bfloat16 copy of its current weights (active
    deltas included) when asked for. Never chosen by the machine: the same fact must give the same delta
    on every CPU. δ stays float32; the gates judge the float32 result."""
    return cast_copy(model, "bfloat16") if precision == "bfloat16" else model


def optimise_value(
    model: Any,
    tokenizer: Any,
    module: str,
    fact: Fact,
    target_ids: list[int],
    prefixes: Sequence[str],
    params: RomeParams,
    phrasings: Sequence[str] = (),
    context: Sequence[str] = (),
    reader: torch.Tensor | None = None,
) -> ValueResult:
    """Find δ (1-D, the module's output width) as described in the module docstring.

    ``phrasings`` are other prompts stating the same fact about the same subject; they join the rewrite
    prompt in the NLL term (each with every prefix), so δ must work for more than one wording.
    ``context`` are texts that state the edit and then ask about another subject; their next-token
    distributions are held to the unedited model's (``context_kl``), so the edited subject does not
    bleed into what is said about others after it (CounterFact+'s NS+).

    ``reader`` (``u / (u·k*)``, shape (d_in,)) makes the optimisation see δ as the shipped rank-one weight
    delivers it: every position from the subject's last token on moves by ``(k_t·reader) δ`` for its own
    key ``k_t``, instead of exactly δ at the subject's last token. A row whose key differs from the
    averaged ``k*`` then gets the change the edited model will really make, so the stopping rule holds
    for the model that is committed (without it, a bare prompt whose key reads δ at 0.6× can miss the
    target the optimisation reached). Positions before the subject's last token (cached) see no change.
    """
    import torch

    from cathrepo.lm.hooks import add_to_output
    from cathrepo.lm.scoring import hidden_and_head
    from cathrepo.models import model_device

    model = working_copy(model, params.precision)
    device = model_device(model)
    after = [f"{fact.prompt} {fact.target_new}"] if params.after_kl > 0 else []
    b = {k: v.to(device) if hasattr(v, "to") else v for k, v in _batch(tokenizer, fact, target_ids, prefixes,
                                                                         [fact.prompt, *phrasings],
                                                                         [*after, *context],
                                                                         params.phrasing_prefixes).items()}
    cache = _prefix_cache(model, b)
    split = hidden_and_head(model)
    state: dict[str, Any] = {}
    delta: torch.Tensor | None = None

    def add_delta(inp: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        nonlocal delta  # out: (batch, suffix, d_out); column 0 = the subject's last token
        if "v0" not in state:
            state["v0"] = out[0, 0].detach().float()
        if delta is None:
            delta = torch.zeros(out.shape[-1], device=device, requires_grad=True)
        if reader is not None and inp is not None:
            gain = inp.float() @ reader.to(device)  # (batch, suffix): how strongly each position reads δ
            return (out + gain[..., None] * delta).to(out.dtype)
        return torch.cat([(out[:, :1] + delta).to(out.dtype), out[:, 1:]], dim=1)

    if params.v_solver == "min_norm":
        return _min_norm(model, module, split, b, cache, reader, params, after=bool(after))

    optimizer: torch.optim.Optimizer | None = None
    nll_start = nll = kl = float("nan")
    steps, stopped = 0, False
    with add_to_output(model, {module: add_delta}), torch.enable_grad():
        for step in range(params.v_steps + 1):
            logp = _read_logprobs(model, split, b, cache)  # (n_rewrite * n_target + n_kl, vocab)
            n_kl = len(b["kl_rows"])
            token_lp = logp[:-n_kl].gather(1, b["tokens"][:, None]).squeeze(1)
            row_lp = token_lp.view(b["n_rewrite"], b["n_target"]).mean(1)  # (n_rewrite,)
            nll_t = -row_lp.mean()
            if "p0" not in state:  # δ is still zero: the unedited distributions
                state["p0"] = logp[-n_kl:].detach()
            kls = torch.nn.functional.kl_div(logp[-n_kl:], state["p0"], log_target=True, reduction="none").sum(-1)
            kl_t = kls[0]  # (n_kl,): the essence row, the row after the stated target, the context rows
            after_t = kls[1] if after else kl_t * 0
            bleed_t = kls[1 + len(after):].mean() if n_kl > 1 + len(after) else kl_t * 0
            assert delta is not None
            v0_norm2 = state["v0"].norm() ** 2
            loss = (nll_t + params.kl_factor * kl_t + params.context_kl * bleed_t + params.after_kl * after_t
                    + params.v_weight_decay * delta.norm() ** 2 / v0_norm2)
            nll, kl = float(nll_t.detach()), float(kl_t.detach())
            if step == 0:
                nll_start = nll
                optimizer = torch.optim.Adam([delta], lr=params.v_lr)
            top1: list[bool] = []  # whether each row's most likely next token is the target's first
            if params.v_stop_top1:
                first = logp[:-n_kl].view(b["n_rewrite"], b["n_target"], -1)[:, 0]  # (n_rewrite, vocab)
                top1 = (first.detach().argmax(-1) == b["tokens"][0]).tolist()
            stopped = stop_reached(params, row_lp.detach().tolist(), top1, nll, b["n_prompt"])
            if stopped or step == params.v_steps:
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
    return ValueResult(final, steps, nll_start, nll, kl, float(final.norm() / state["v0"].norm()), stopped)


def _min_norm(model: Any, module: str, split: Any, b: dict[str, Any], cache: Any, reader: torch.Tensor | None,
              params: RomeParams, after: bool = False) -> ValueResult:
    """A small δ whose judged rows give the target ``v_stop_prob`` (``v_solver`` "min_norm").

    Gauss-Newton for an underdetermined system, from δ = 0: at δₖ every rewrite row's mean target
    log-probability ℓᵣ and its gradient Jᵣ come from one forward and one backward pass (δ is a separate
    leaf per row, so the backward of Σℓᵣ yields every row's gradient at once), and the step is the
    shortest one that the linear model says lifts every judged row to the bar,

        sₖ = argmin ‖s‖  subject to  Jᵣ·s ≥ log v_stop_prob + v_margin − ℓᵣ(δₖ)   for every judged row

    (the prompt under every prefix; the phrasings too with ``phrasing_stop``), a small QP solved in its
    dual, cut to a trust radius (``v_radius`` · ‖v₀‖ at first, doubled or halved as the worst row gains
    what the step promised). δₖ₊₁ = δₖ + sₖ; it stops when every judged row meets the bar at the point
    itself (the same rule as Adam's), with ‖δ‖ bounded by ``clamp_norm_factor`` · ‖v₀‖, after at most
    ``v_passes`` passes. When δ reaches that bound with the phrasings still below the bar, they are let
    go (``relaxed``): it starts again from zero on the prompt's rows alone, which then decide the stop. Each step moves only along the rows' own gradients, so δ stays close to the
    least change that says the fact, instead of Adam's path walked until the bar is crossed and past it
    by whatever the last step adds, in a handful of passes instead of tens of Adam steps.
    """
    import torch

    from cathrepo.lm.hooks import add_to_output

    n_rows = b["suffix_ids"].shape[0]
    n_rew, n_tgt, n_kl = b["n_rewrite"], b["n_target"], len(b["kl_rows"])
    judged = n_rew if params.phrasing_stop else b["n_prompt"]
    bar = math.log(params.v_stop_prob) if params.v_stop_prob > 0 else -params.v_stop_nll
    aim = min(bar + params.v_margin, -1e-3)
    state: dict[str, Any] = {}
    leaf: torch.Tensor | None = None

    def add_delta(inp: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        if "v0" not in state:
            state["v0"] = out[0, 0].detach().float()
        assert leaf is not None
        if reader is not None and inp is not None:
            gain = inp.float() @ reader.to(out.device)  # (batch, suffix)
            return (out + gain[..., None] * leaf[:, None, :]).to(out.dtype)
        return torch.cat([(out[:, :1] + leaf[:, None, :]).to(out.dtype), out[:, 1:]], dim=1)

    d_out = None
    delta = torch.zeros(0)
    nll_start = nll = kl = float("nan")
    steps, stopped, relaxed = 0, False, False
    rule, limit = params, math.inf
    radius: float | None = None  # trust region: the longest step, halved or doubled as the model keeps its promise
    promised: float | None = None
    worst = 0.0
    with add_to_output(model, {module: add_delta}), torch.enable_grad():
        for step in range(params.v_passes + 1):
            if d_out is None:  # learn the width from a first pass with a zero leaf
                d_out = _module_width(model, module)
                delta = torch.zeros(d_out, device=b["suffix_ids"].device)
            leaf = delta.detach().expand(n_rows, -1).clone().requires_grad_(True)
            logp = _read_logprobs(model, split, b, cache)
            token_lp = logp[:-n_kl].gather(1, b["tokens"][:, None]).squeeze(1)
            row_lp = token_lp.view(n_rew, n_tgt).mean(1)  # (n_rewrite,)
            if "p0" not in state:
                state["p0"] = logp[-n_kl:].detach()
            kl = float(torch.nn.functional.kl_div(logp[-n_kl].detach(), state["p0"][0], log_target=True, reduction="sum"))
            nll = float(-row_lp.detach().mean())
            if step == 0:
                nll_start = nll
            values = row_lp.detach().tolist()
            stopped = stop_reached(rule, values, [True] * n_rew, nll, b["n_prompt"])
            if stopped or step == params.v_passes:
                break
            if judged > b["n_prompt"] and float(delta.norm()) >= 0.999 * limit:
                # the norm bound cannot hold every phrasing to the bar: the prompt's rows alone, from zero
                judged, rule, relaxed = b["n_prompt"], dataclasses.replace(params, phrasing_stop=False), True
                delta, radius, promised = torch.zeros_like(delta), None, None
                continue
            if promised is not None and radius is not None:  # how much of the promised gain the worst row got
                got = min(values[:judged]) - worst
                ratio = got / promised if promised > 0 else 1.0
                radius = radius * 2 if ratio > 0.75 else radius / 2 if ratio < 0.25 else radius
            (grads,) = torch.autograd.grad(row_lp[:judged].sum(), leaf)
            jac = grads[:judged].double()  # (judged, d_out): each row's gradient, from its own leaf
            need = torch.tensor([aim - v for v in values[:judged]], dtype=torch.float64, device=jac.device)
            step_ = _least_norm(jac, need)
            if radius is None:
                radius = params.v_radius * float(state["v0"].norm())
            if float(step_.norm()) > radius:
                step_ = step_ * (radius / float(step_.norm()))
            worst = min(values[:judged])
            promised = float(min(jac @ step_ + torch.tensor(values[:judged], dtype=torch.float64, device=jac.device))) - worst
            delta = delta + step_.float()
            steps += 1
            limit = params.clamp_norm_factor * float(state["v0"].norm())
            if float(delta.norm()) > limit:
                delta = delta * (limit / float(delta.norm()))
    final = delta.detach().clone()
    return ValueResult(final, steps, nll_start, nll, kl, float(final.norm() / state["v0"].norm()), stopped,
                       relaxed)


def _module_width(model: Any, module: str) -> int:
    from cathrepo.models import get_module, weight_shape

    return weight_shape(get_module(model, module))[0]


def _least_norm(jac: torch.Tensor, need: torch.Tensor, sweeps: int = 500) -> torch.Tensor:
    """argmin ‖x‖ subject to ``jac @ x >= need`` (rows of ``jac`` are constraints), through its dual
    max_{λ≥0} λ·need − ½ λᵀ(J Jᵀ)λ, x = Jᵀλ, solved by coordinate ascent (Hildreth's method)."""
    import torch

    gram = jac @ jac.T
    gram = gram + 1e-9 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    lam = torch.zeros(len(need), dtype=jac.dtype, device=jac.device)
    for _ in range(sweeps):
        moved = 0.0
        for i in range(len(need)):
            new = max(0.0, float(lam[i] + (need[i] - gram[i] @ lam) / gram[i, i]))
            moved = max(moved, abs(new - float(lam[i])))
            lam[i] = new
        if moved < 1e-10:
            break
    return jac.T @ lam
