"""Teacher→student activation patching: which activations carry a fact read from the context (stage ③).

The teacher is the base model with the fact (or a passage) in its context; the student is the same model
on the bare prompt. Copying one teacher activation (a module's output at one layer, at one token or at
all the subject's tokens) into the student's run and measuring the target's probability shows where the
context's information would have to be written for the student to answer like the teacher.

Per-layer scores patch the subject's tokens only. Patching the last token finds where the teacher
*reads* the fact from its context (attention in the last third of the network); LoRA edits written
there acted on every prompt of the relation (neighbourhood score 0.4 against 0.7 at ROME's fixed layer
on 10 CounterFact records, SmolLM2-135M). At the subject's tokens the same patch finds mid-layer MLPs
whose output, for this subject, carries the new fact; edits there still bled more than at the fixed
layer (0.5 against 0.7 on 30 records), so the LoRA trainer defaults to causal tracing near ROME's layer.

Tokens are aligned by :func:`~cathrepo.attribution.align`: the student's prompt tokens are the last tokens
of the teacher's sequence. Per-token runs are grouped by token with the student's clean prefix as a KV
cache, as in :mod:`~cathrepo.attribution.causal_trace`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cathrepo.attribution import (
    Aligned,
    ScoreMap,
    align,
    check_components,
    module_names,
    token_strings,
)
from cathrepo.lm.hooks import capture, edit_output
from cathrepo.lm.tokens import first_token_id

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def patch(
    model: Any,
    tokenizer: Any,
    prompt: str,
    subject: str,
    target: str,
    *,
    context: str | None = None,
    components: Sequence[str] = ("hidden", "mlp", "attn"),
    per_token: bool = True,
) -> ScoreMap:
    """Patch teacher activations into the student, per (layer, token) and per layer.

    Args:
        model: the base model (left unchanged).
        tokenizer: its tokenizer.
        prompt: the student's prompt (contains ``subject``).
        subject: the subject; per-layer scores patch its tokens.
        target: the answer the context teaches.
        context: the teacher's context; None states the fact twice
            (:func:`~cathrepo.facts.passage.stated_context`).
        components: which module outputs to patch: "hidden", "mlp", "attn".
        per_token: also patch one token at a time (the heatmap); off for site selection.

    Returns:
        A ScoreMap: ``scores[component][layer][token]`` is p(target's first token) in the student with that one
        activation patched, ``layer_scores[component][layer]`` the gain in log p(target) with the subject's
        tokens patched (log, so that a target the student finds very unlikely still ranks the layers),
        ``low``/``high`` the student's and the teacher's probabilities.
    """
    import torch

    from cathrepo.facts.passage import stated_context
    from cathrepo.models import model_device, num_layers

    started = time.perf_counter()
    components = check_components(components)
    context = context or stated_context(prompt, target)
    al = align(tokenizer, context, prompt, subject)
    answer = first_token_id(tokenizer, target)
    device = model_device(model)
    student = torch.tensor([al.student], device=device)
    names = {component: module_names(model, component) for component in components}
    n_layers, n_tokens = num_layers(model), len(al.student)

    # 1. Teacher and student runs: the baselines and the teacher's activations at aligned positions.
    with torch.no_grad(), capture(model, [n for ns in names.values() for n in ns]) as rec:
        high = _prob(model(input_ids=torch.tensor([al.teacher], device=device), logits_to_keep=1), answer)[0]
    teacher = {n: out[0, al.shift :] for n, out in rec.outputs.items()}  # (T_student, d) aligned
    with torch.no_grad():
        low = _prob(model(input_ids=student, logits_to_keep=1), answer)[0]

    # 2. Per layer: patch the subject's tokens, all layers of a component in one batch.
    positions = list(range(*al.subject))
    layer_scores = {}
    for component in components:
        probs = _patched_run(model, student, names[component], teacher, positions, None, answer)
        layer_scores[component] = _log_gain(probs, low)

    # 3. Per token (the heatmap): rows = layers, the student's clean prefix as a KV cache.
    scores = {component: [[float(low)] * n_tokens for _ in range(n_layers)] for component in components}
    if per_token:
        for t in range(al.start, n_tokens):
            prefix = _prefix_cache(model, student, t)
            for component in components:
                probs = _patched_run(model, student, names[component], teacher, [t], prefix, answer)
                for layer in range(n_layers):
                    scores[component][layer][t] = float(probs[layer])
    seconds = time.perf_counter() - started
    log.info("Patching of %r: %s in %.1f s", prompt, ",".join(components), seconds)
    return ScoreMap(
        method="patching",
        prompt=prompt,
        subject=subject,
        target=target,
        tokens=token_strings(tokenizer, al.student),
        subject_range=al.subject,
        scores=scores,
        low=float(low),
        high=float(high),
        layer_scores=layer_scores,
        meta={"context": context, "seconds": round(seconds, 3),
              "answer_token": answer, "per_layer_positions": list(al.subject)},
    )


def _log_gain(probs: torch.Tensor, low: torch.Tensor | float) -> list[float]:
    import math

    floor = 1e-12
    base = math.log(max(float(low), floor))
    return [math.log(max(float(p), floor)) - base for p in probs]


def layer_gains(model: Any, tokenizer: Any, al: Aligned, answer: int, component: str) -> tuple[list[float], float, float]:
    """Per-layer gain in log p(answer) with the subject's tokens patched, plus (low, high)."""
    import torch

    from cathrepo.models import model_device

    device = model_device(model)
    names = module_names(model, component)
    student = torch.tensor([al.student], device=device)
    with torch.no_grad(), capture(model, names) as rec:
        high = _prob(model(input_ids=torch.tensor([al.teacher], device=device), logits_to_keep=1), answer)[0]
    with torch.no_grad():
        low = _prob(model(input_ids=student, logits_to_keep=1), answer)[0]
    teacher = {n: rec.outputs[n][0, al.shift :] for n in names}
    positions = list(range(*al.subject))
    probs = _patched_run(model, student, names, teacher, positions, None, answer)
    return _log_gain(probs, low), float(low), float(high)


def _prob(out: Any, answer: int) -> torch.Tensor:
    import torch

    return torch.softmax(out.logits[:, -1].float(), -1)[:, answer]


def _prefix_cache(model: Any, ids: torch.Tensor, t: int) -> Any:
    import torch
    from transformers import DynamicCache

    from cathrepo.models import cache_kwargs

    if t == 0:
        return None
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids[:, :t], logits_to_keep=1, **cache_kwargs(model, cache))
    return cache


def _patched_run(
    model: Any,
    ids: torch.Tensor,
    names: list[str],
    teacher: dict[str, torch.Tensor],
    positions: list[int],
    cache: Any,
    answer: int,
) -> torch.Tensor:
    """p(answer) for row j = the student with module ``names[j]`` patched at ``positions``.

    With a prefix ``cache`` of length t the run covers positions [t, T) and ``positions`` must be [t].
    """
    import torch

    from cathrepo.models import cache_kwargs

    n = len(names)
    start = 0 if cache is None else cache.get_seq_length()
    local = [p - start for p in positions]

    def make(j: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(out: torch.Tensor) -> torch.Tensor:  # (n, len, d)
            out = out.clone()
            out[j, local] = teacher[names[j]][positions].to(out.dtype)
            return out

        return fn

    kwargs: dict[str, Any] = {}
    if cache is not None:
        prefix = copy.deepcopy(cache)
        prefix.batch_repeat_interleave(n)
        kwargs = cache_kwargs(model, prefix)
    with torch.no_grad(), edit_output(model, {names[j]: make(j) for j in range(n)}):
        out = model(input_ids=ids[:, start:].expand(n, -1), logits_to_keep=1, **kwargs)
    return _prob(out, answer)
