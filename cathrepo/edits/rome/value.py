"""ROME's value side: the change ``δ`` of the projection's output that makes the model say the target.

Optimises ``δ`` added to the output of the edited module at the subject's last token (ROME §3.1, eq. 4):

    L(δ) = mean_j NLL(target | prefix_j + prompt_i)                (rewrite, every prefix × phrasing)
         + kl_factor · KL(P₀(· | "{subject} is a") ‖ P_δ(·))        (essence drift)
         + context_kl · mean_c KL(P₀(· | c) ‖ P_δ(· | c))           (bleed: c = the edit, then another subject)
         + after_kl · KL(P₀(· | prompt + target) ‖ P_δ(·))          (what follows the answer: no repeating it)
         + v_weight_decay · ‖δ‖² / ‖v₀‖²                             (keep the change small)
         + mean_j max(0, log P_δ(old answer | prompt_j) − log away_prob)   (with ``away_prob``: the old answer goes)

with ‖δ‖ clamped to ``clamp_norm_factor · ‖v₀‖`` after each Adam step, where v₀ is the module's
original output on the bare prompt. Stops early once the rewrite NLL is below ``v_stop_nll`` or, with
``v_stop_prob``, once every rewrite row gives the target at least that (length-normalised) probability
(with ``v_stop_top1``, and the target's first token is every row's most likely next token):
an edit stops where the model says the fact, instead of driving it to certainty (a target every prompt
already gives with that probability stops at once, with δ = 0).

That is ``v_solver`` "adam". The default, "min_norm" (:func:`~cathrepo.edits.rome.min_norm.solve_min_norm`),
meets the same stopping rule with a near-smallest δ instead of walking Adam's path until it is met: the
loss terms above (KL, weight decay) are then not read, the bar and the norm bound are, and what the KL
terms on context and on the stated answer aim at is held by caps instead (``context_cap``, ``after_cap``:
the new target may rise there by at most so many nats). Both run on the rows of
:mod:`cathrepo.edits.rome.rows`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cathrepo.edits.rome.min_norm import solve_min_norm
from cathrepo.edits.rome.rows import (
    ValueResult,
    away_logprobs,
    away_token,
    batch_rows,
    output_width,
    prefix_cache,
    read_logprobs,
    stop_reached,
    value_hook,
)
from cathrepo.facts.schema import Fact
from cathrepo.lm.precision import cast_copy
from cathrepo.lm.replay import layers_below

if TYPE_CHECKING:
    import torch

    from cathrepo.edits.rome.params import RomeParams


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
    held: int = 0,
) -> ValueResult:
    """Find δ (1-D, the module's output width) as described in the module docstring.

    ``phrasings`` are other prompts stating the same fact about the same subject; they join the rewrite
    prompt in the NLL term (each with every prefix), so δ must work for more than one wording. The first
    ``held`` of them (a forget's formats) are judged like the prompt: min_norm never lets them go.
    ``context`` are texts that state the edit and then ask about another subject; their next-token
    distributions are held to the unedited model's (``context_kl``, Adam), or the new target's rise in
    them is capped (``context_cap``, min_norm), so the edited subject does not bleed into what is said
    about others after it (CounterFact+'s NS+).

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
    min_norm = params.v_solver == "min_norm"

    def on_device(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}

    # min_norm reads the context rows in a batch of their own: they are several times longer than the
    # rewrite rows, which would otherwise all be padded to their width
    b = on_device(batch_rows(tokenizer, fact, target_ids, prefixes, [fact.prompt, *phrasings],
                             [] if min_norm else [*after, *context], params.phrasing_prefixes, held))
    b["away"] = away_token(tokenizer, fact, target_ids, params.away_prob)
    cache = prefix_cache(model, b)
    split = hidden_and_head(model)
    state: dict[str, Any] = {}
    lower: tuple[list[str], dict[str, Any]] = (layers_below(model, module), {})  # run once, then replayed
    if min_norm:  # the capped rows: what follows the stated answer, other subjects after the edited sentence
        capped = [(f"{fact.prompt} {fact.target_new}", params.after_cap)] if params.after_cap > 0 else []
        capped += [(text, params.context_cap) for text in context] if params.context_cap > 0 else []
        side: tuple[dict[str, Any], Any, tuple[list[str], dict[str, Any]]] | None = None
        if capped:
            bc = on_device(batch_rows(tokenizer, fact, target_ids, [], [], [text for text, _ in capped]))
            bc["caps"] = torch.tensor([cap for _, cap in capped], dtype=torch.float64)
            side = (bc, prefix_cache(model, bc), (lower[0], {}))
        return solve_min_norm(model, module, split, b, cache, reader, params, state, lower, side)

    delta = torch.zeros(output_width(model, module), device=device, requires_grad=True)

    optimizer: torch.optim.Optimizer | None = None
    nll_start = nll = kl = float("nan")
    steps, stopped = 0, False
    with add_to_output(model, {module: value_hook(state, lambda: delta, reader)}), torch.enable_grad():
        for step in range(params.v_steps + 1):
            logp = read_logprobs(model, split, b, cache, lower)  # (n_rewrite * n_target + n_kl, vocab)
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
            v0_norm2 = state["v0"].norm() ** 2
            loss = (nll_t + params.kl_factor * kl_t + params.context_kl * bleed_t + params.after_kl * after_t
                    + params.v_weight_decay * delta.norm() ** 2 / v0_norm2)
            away_t = away_logprobs(logp, b)
            if away_t is not None:
                loss = loss + torch.relu(away_t - math.log(params.away_prob)).mean()
            nll, kl = float(nll_t.detach()), float(kl_t.detach())
            if step == 0:
                nll_start = nll
                optimizer = torch.optim.Adam([delta], lr=params.v_lr)
            top1: list[bool] = []  # whether each row's most likely next token is the target's first
            if params.v_stop_top1:
                first = logp[:-n_kl].view(b["n_rewrite"], b["n_target"], -1)[:, 0]  # (n_rewrite, vocab)
                top1 = (first.detach().argmax(-1) == b["tokens"][0]).tolist()
            first_lp = token_lp.detach().view(b["n_rewrite"], b["n_target"])[:, 0].tolist()
            away = away_t.detach().tolist() if away_t is not None else []
            stopped = stop_reached(params, row_lp.detach().tolist(), top1, nll, b["n_prompt"], first_lp, away)
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
    final = delta.detach().clone()
    return ValueResult(final, steps, nll_start, nll, kl, float(final.norm() / state["v0"].norm()), stopped)

