"""ROME's value by the least change: ``v_solver`` "min_norm" (the default).

Adam (:func:`~cathrepo.edits.rome.value.optimise_value`, which calls this solver by default) walks δ
until the stopping rule holds and past it by whatever its last step adds; this solver steps, pass by
pass, as little as the rows' own gradients say reaches the rule's bar. Measured against Adam in
BENCHMARKS.md ("The smallest value that says the fact").
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from cathrepo.edits.rome.rows import (
    ValueResult,
    away_logprobs,
    output_width,
    read_logprobs,
    stop_reached,
    value_hook,
)

if TYPE_CHECKING:
    import torch

    from cathrepo.edits.rome.params import RomeParams


def solve_min_norm(model: Any, module: str, split: Any, b: dict[str, Any], cache: Any,
                   reader: torch.Tensor | None, params: RomeParams, state: dict[str, Any],
                   lower: tuple[list[str], dict[str, Any]] | None = None,
                   side: tuple[dict[str, Any], Any, tuple[list[str], dict[str, Any]] | None] | None = None,
                   ) -> ValueResult:
    """A small δ whose judged rows give the target ``v_stop_prob`` (``v_solver`` "min_norm").

    Gauss-Newton for an underdetermined system, from δ = 0: at δₖ every rewrite row's mean target
    log-probability ℓᵣ and its gradient Jᵣ come from one forward and one backward pass (δ is a separate
    leaf per row, so the backward of Σℓᵣ yields every row's gradient at once), and the step is the
    shortest one that the linear model says lifts every judged row to the bar,

        sₖ = argmin ‖s‖  subject to  Jᵣ·s ≥ log v_stop_prob + v_margin − ℓᵣ(δₖ)   for every judged row

    (the prompt under every prefix; the phrasings too with ``phrasing_stop``; with ``v_stop_first``, each
    judged row's first target token as a second constraint aimed at that bar; with ``away_prob``, each
    judged row's old-answer first token as an upper bound, ``−J_a·s ≥ ℓ_a(δₖ) − log away_prob + v_margin``),
    a small QP solved in its
    dual, cut to a trust radius (``v_radius`` · ‖v₀‖ at first, doubled or halved as the worst row gains
    what the step promised). δₖ₊₁ = δₖ + sₖ; it stops when every judged row meets the bar at the point
    itself (the same rule as Adam's), with ‖δ‖ bounded by ``clamp_norm_factor`` · ‖v₀‖, after at most
    ``v_passes`` passes. When δ reaches that bound with the phrasings still below the bar, they are let
    go (``relaxed``): it starts again from zero on the prompt's rows alone, which then decide the stop.
    Each step moves only along the rows' own gradients, so δ stays close to the least change that says
    the fact, in a handful of passes instead of tens of Adam steps. ``lower`` (the layers under the edited
    one and their store) is handed to :func:`~cathrepo.edits.rome.rows.read_logprobs` to replay them.

    ``side`` (capped rows, their prefix cache and layer store) adds one upper bound per such row, read in
    a forward and backward of their own (they are longer than the rewrite rows):

        J_c·s ≤ ℓ_c(0) + cap_c − ℓ_c(δₖ)     (ℓ_c: the new target's first-token log-probability)

    The rows are other subjects' prompts read after the edited sentence (``context_cap``: the target must
    not bleed into what is said about them by more than the cap over what the unedited model already
    says with the edit in its context) and the stated answer itself (``after_cap``: the target must not
    become what comes next, the edit that makes the model say it again and again). The bounds are soft
    (a ridge on their dual variables): where they and the bar cannot both hold, the step trades them off
    instead of failing, and the bar alone decides the stop.
    """
    import torch

    from cathrepo.lm.hooks import add_to_output

    n_rows = b["suffix_ids"].shape[0]
    n_rew, n_tgt, n_kl = b["n_rewrite"], b["n_target"], len(b["kl_rows"])
    judged = n_rew if params.phrasing_stop else b["n_prompt"]
    bar = math.log(params.v_stop_prob) if params.v_stop_prob > 0 else -params.v_stop_nll
    aim = min(bar + params.v_margin, -1e-3)
    leaf = torch.zeros(0)
    delta = torch.zeros(output_width(model, module), device=b["suffix_ids"].device)
    nll_start = nll = kl = float("nan")
    steps, stopped, relaxed = 0, False, False
    rule, limit = params, math.inf
    radius: float | None = None  # trust region: the longest step, halved or doubled as the model keeps its promise
    promised: float | None = None
    worst = 0.0
    first_aim = min(math.log(params.v_stop_first) + params.v_margin, -1e-3) if params.v_stop_first > 0 else None
    two = first_aim is not None and n_tgt > 1  # a one-token target's row is its first token already
    away_aim = math.log(params.away_prob) - params.v_margin if b.get("away") is not None else None
    first_token = int(b["tokens"][0])
    now_leaf: list[torch.Tensor] = [leaf]  # the leaf of the batch being read (the rows, or the side rows)
    with add_to_output(model, {module: value_hook(state, lambda: now_leaf[0], reader)}), torch.enable_grad():
        for step in range(params.v_passes + 1):
            leaf = delta.detach().expand(n_rows, -1).clone().requires_grad_(True)
            now_leaf[0] = leaf
            logp = read_logprobs(model, split, b, cache, lower)
            token_lp = logp[:-n_kl].gather(1, b["tokens"][:, None]).squeeze(1).view(n_rew, n_tgt)
            row_lp = token_lp.mean(1)  # (n_rewrite,)
            first_lp = token_lp[:, 0]
            if "p0" not in state:
                state["p0"] = logp[-n_kl:].detach()
            kl = float(torch.nn.functional.kl_div(logp[-n_kl].detach(), state["p0"][0], log_target=True, reduction="sum"))
            nll = float(-row_lp.detach().mean())
            if step == 0:
                nll_start = nll
            values, firsts = row_lp.detach().tolist(), first_lp.detach().tolist()
            away_lp = away_logprobs(logp, b)
            aways = away_lp.detach().tolist() if away_lp is not None else []
            stopped = stop_reached(rule, values, [True] * n_rew, nll, b["n_prompt"], firsts, aways)
            if stopped or step == params.v_passes:
                break
            if judged > b["n_prompt"] and float(delta.norm()) >= 0.999 * limit:
                # the norm bound cannot hold every phrasing to the bar: the prompt's rows alone, from zero
                judged, rule, relaxed = b["n_prompt"], dataclasses.replace(params, phrasing_stop=False), True
                delta, radius, promised = torch.zeros_like(delta), None, None
                continue
            # the constraints: each judged row's mean target log-probability, then (v_stop_first) its first token's
            # and (away_prob) the old answer's first token as an upper bound, signs flipped to read like the rest
            current = values[:judged] + (firsts[:judged] if two else []) + [-a for a in aways[:judged]]
            aims = [aim] * judged + ([first_aim] * judged if two else []) + ([-away_aim] * judged if away_aim is not None and aways else [])
            slack = min(c - a for c, a in zip(current, aims, strict=True))
            if promised is not None and radius is not None:  # how much of the promised gain the worst row got
                ratio = (slack - worst) / promised if promised > 0 else 1.0
                radius = radius * 2 if ratio > 0.75 else radius / 2 if ratio < 0.25 else radius
            (grads,) = torch.autograd.grad(row_lp[:judged].sum(), leaf, retain_graph=two or away_lp is not None)
            rows_ = [grads[:judged]]
            if two:
                (grads_first,) = torch.autograd.grad(first_lp[:judged].sum(), leaf, retain_graph=away_lp is not None)
                rows_.append(grads_first[:judged])
            if away_lp is not None:
                (grads_away,) = torch.autograd.grad(away_lp[:judged].sum(), leaf)
                rows_.append(-grads_away[:judged])
            n_main = sum(len(r) for r in rows_)
            gaps = [n - a for n, a in zip(current, aims, strict=True)]  # ≥ 0 where a row meets its aim
            if side is not None:  # the capped rows: -J_c·s ≥ ℓ_c(δ) - ℓ_c(0) - cap
                ctx_lp, ctx_grads = _side_rows(model, split, side, delta, now_leaf, first_token)
                state.setdefault("ctx0", ctx_lp)
                rows_.append(-ctx_grads)
                gaps += (state["ctx0"] + side[0]["caps"] - ctx_lp).tolist()
            jac = torch.cat(rows_).double()  # (constraints, d_out): each row's gradient, from its own leaf
            gap = torch.tensor(gaps, dtype=torch.float64, device=jac.device)
            ridge = torch.zeros(len(gaps), dtype=torch.float64, device=jac.device)
            if len(gaps) > n_main:  # soft caps: a ridge on their dual variables, relative to the bar's rows
                ridge[n_main:] = SIDE_RIDGE * float((jac[:n_main] ** 2).sum(1).mean())
            step_ = least_norm(jac, -gap, ridge)
            if radius is None:
                radius = params.v_radius * float(state["v0"].norm())
            if float(step_.norm()) > radius:
                step_ = step_ * (radius / float(step_.norm()))
            worst = slack
            promised = float((jac[:n_main] @ step_ + gap[:n_main]).min()) - worst
            delta = delta + step_.float()
            steps += 1
            limit = params.clamp_norm_factor * float(state["v0"].norm())
            if float(delta.norm()) > limit:
                delta = delta * (limit / float(delta.norm()))
    final = delta.detach().clone()
    return ValueResult(final, steps, nll_start, nll, kl, float(final.norm() / state["v0"].norm()), stopped,
                       relaxed)


def _side_rows(model: Any, split: Any, side: tuple[dict[str, Any], Any, Any], delta: torch.Tensor,
               now_leaf: list[torch.Tensor], token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The capped rows' (the stated answer, other subjects after the edited sentence) first-token
    log-probabilities of the new target at ``delta`` and each one's gradient in δ (one forward and one
    backward of their own batch)."""
    import torch

    rows, cache, lower = side
    leaf = delta.detach().expand(rows["suffix_ids"].shape[0], -1).clone().requires_grad_(True)
    now_leaf[0] = leaf
    lp = read_logprobs(model, split, rows, cache, lower)[1:, token]  # row 0 is the essence row: not capped
    (grads,) = torch.autograd.grad(lp.sum(), leaf)
    return lp.detach().double(), grads[1:].double()


#: The ridge on a soft cap's dual variable, relative to the mean squared gradient of the bar's rows: the
#: cap gives way where it and the bar cannot both hold (λ_c ≤ violation / ridge) instead of blowing up.
SIDE_RIDGE = 0.1


def least_norm(jac: torch.Tensor, need: torch.Tensor, ridge: torch.Tensor | None = None,
               sweeps: int = 500) -> torch.Tensor:
    """argmin ‖x‖ subject to ``jac @ x >= need`` (rows of ``jac`` are constraints), through its dual
    max_{λ≥0} λ·need − ½ λᵀ(J Jᵀ + diag(ridge))λ, x = Jᵀλ, solved by coordinate ascent (Hildreth's method).
    A row with a ridge is soft: it may fall short by ``ridge · λ`` (an L2 penalty on its slack)."""
    import torch

    gram = jac @ jac.T
    gram = gram + 1e-9 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    if ridge is not None:
        gram = gram + torch.diag(ridge.to(gram.dtype))
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
