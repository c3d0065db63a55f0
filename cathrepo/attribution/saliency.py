"""Gradient × activation saliency per module (stage ③).

One forward and one backward pass: for every scored module output ``a`` (the residual after a block,
an MLP output, an attention output) at every token, ``(∂ log p(target) / ∂a) · a`` is the first-order
change of the target's log-probability if that activation were removed. It is the cheapest locator
(no extra runs per layer) and the least faithful: a linear estimate, where tracing and patching measure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from cathrepo.attribution import (
    ScoreMap,
    check_components,
    module_names,
    token_strings,
)
from cathrepo.lm.hooks import capture, edit_output
from cathrepo.lm.tokens import first_token_id, subject_token_span

log = logging.getLogger(__name__)


def saliency(
    model: Any,
    tokenizer: Any,
    prompt: str,
    subject: str,
    target: str | None = None,
    *,
    components: Sequence[str] = ("hidden", "mlp", "attn"),
) -> ScoreMap:
    """Gradient × activation of log p(target's first token) for each (layer, token) and component.

    Args:
        model: the base model (its weights get no gradient and stay unchanged).
        tokenizer: its tokenizer.
        prompt: the prompt, containing ``subject``.
        subject: marks the subject tokens in the result.
        target: the answer; None takes the model's greedy next token.
        components: which module outputs to score.

    Returns:
        A ScoreMap: ``scores[component][layer][token]`` is the signed gradient × activation,
        ``layer_scores[component][layer]`` the sum of its absolute values over the tokens from the subject on.
    """
    import torch

    from cathrepo.models import family_for, model_device, num_layers

    started = time.perf_counter()
    components = check_components(components)
    device = model_device(model)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
    s0, s1 = subject_token_span(tokenizer, prompt, subject)
    names = {component: module_names(model, component) for component in components}
    flat = [n for ns in names.values() for n in ns]

    def leaf(emb: torch.Tensor) -> torch.Tensor:  # the graph starts at the embeddings, not the weights
        return emb.detach().requires_grad_(True)

    with torch.enable_grad(), edit_output(model, {family_for(model).embed: leaf}), \
            capture(model, flat, detach=False) as rec:
        logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
        answer = first_token_id(tokenizer, target) if target else int(logits.argmax())
        logp = torch.log_softmax(logits, -1)[answer]
        grads = torch.autograd.grad(logp, [rec.outputs[n] for n in flat], allow_unused=True)
    by_name = dict(zip(flat, grads, strict=True))
    scores: dict[str, list[list[float]]] = {}
    layer_scores: dict[str, list[float]] = {}
    for component in components:
        rows = []
        for name in names[component]:
            grad, act = by_name[name], rec.outputs[name].detach()
            rows.append(((grad if grad is not None else torch.zeros_like(act)) * act)[0].sum(-1).tolist())
        scores[component] = rows
        layer_scores[component] = [sum(abs(x) for x in row[s0:]) for row in rows]
    seconds = time.perf_counter() - started
    return ScoreMap(
        method="saliency",
        prompt=prompt,
        subject=subject,
        target=target if target else (tokenizer.decode([answer]).strip() or tokenizer.decode([answer])),
        tokens=token_strings(tokenizer, ids[0].tolist()),
        subject_range=(s0, s1),
        scores=scores,
        low=0.0,
        high=float(logp.detach().exp()),
        layer_scores=layer_scores,
        meta={"seconds": round(seconds, 3), "answer_token": answer, "layers": num_layers(model)},
    )
