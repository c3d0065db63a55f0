"""Causal tracing: corrupt the subject, restore one clean state, measure what returns (stage ③).

ROME (Meng et al. 2022, §2.1): add Gaussian noise (3 × the embeddings' standard deviation) to the
subject's token embeddings, then restore the clean value of one state — the residual stream ("hidden"),
an MLP output or an attention output, at one layer and one token — and read the probability of the
answer's first token at the last position. States that bring the probability back carry the fact.

Cost is what matters on a CPU. Restoring token ``t`` changes nothing before ``t``, so the runs are
grouped by token: the corrupted prefix ``[0, t)`` is computed once per noise sample and kept as a KV
cache (shared by all components), and one batched forward of the suffix ``[t, T)`` covers every layer × noise sample. Tokens before
the subject are not run at all (restoring them cannot change the corrupted run). MLP and attention
restores span a window of layers as in ROME (10 on GPT-2 XL's 48 layers; scaled to the depth here).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cathrepo.attribution import (
    ScoreMap,
    check_components,
    module_names,
    token_strings,
)
from cathrepo.exceptions import InvalidInputError
from cathrepo.lm.hooks import capture, edit_output
from cathrepo.lm.precision import bf16_is_fast
from cathrepo.lm.tokens import first_token_id, subject_token_span

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TraceResult = ScoreMap  # the causal trace's result is a ScoreMap with method "causal_trace"

NOISE_FACTOR = 3.0  # ROME: noise std = 3 × the standard deviation of the embeddings


def embedding_std(model: Any, max_tokens: int = 8192) -> float:
    """Standard deviation of the embedding module's output over the first ``max_tokens`` vocabulary ids.

    ROME measures it on the subjects of its known facts; the whole vocabulary is a fact-free stand-in
    that does not depend on the prompt. The embedding *module* is used (not its weight) so that
    families that scale embeddings inside the module (Gemma) get the scale they run with.
    """
    import torch

    from cathrepo.models import family_for, get_module, model_device

    embed = get_module(model, family_for(model).embed)
    ids = torch.arange(min(max_tokens, embed.weight.shape[0]), device=model_device(model))
    with torch.no_grad():
        return float(embed(ids).float().std())




def default_window(model: Any) -> int:
    """ROME's restore window of 10 layers on a 48-layer model, scaled to this model's depth."""
    from cathrepo.models import num_layers

    return max(1, round(10 * num_layers(model) / 48))


def _window(layer: int, window: int, n_layers: int) -> range:
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def trace(
    model: Any,
    tokenizer: Any,
    prompt: str,
    subject: str,
    target: str | None = None,
    *,
    components: Sequence[str] = ("hidden", "mlp", "attn"),
    samples: int = 3,
    noise: float | None = None,
    window: int | None = None,
    seed: int = 0,
    precision: str = "float32",
    tokens: Sequence[int] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ScoreMap:
    """Causal trace of ``prompt``: p(target's first token) with each (layer, token) state restored.

    Args:
        model: the base model (left unchanged; hooks are removed on exit).
        tokenizer: its tokenizer.
        prompt: the prompt, containing ``subject``.
        subject: the tokens that are corrupted.
        target: the answer; None takes the model's own greedy next token (what it knows).
        components: which states to restore: "hidden" (residual after a block), "mlp", "attn".
        samples: noise samples averaged per restored run (ROME uses 10).
        noise: noise standard deviation; None uses 3 × the embeddings' standard deviation.
        window: layers restored together for "mlp"/"attn" (None: ROME's 10 of 48, scaled).
        seed: seeds the noise, so a trace is deterministic.
        precision: "float32", "bfloat16" (the corrupted and restored runs under autocast: 2.3× faster on
            CPUs with AVX-512 BF16, probabilities within about 0.02 of float32) or "auto" (bfloat16 where
            it is fast, see :func:`bf16_is_fast`).
        tokens: restore only these token positions (None: every token from the subject on); the
            others keep the corrupted probability. Site selection restores the subject tokens only.
        progress: called as ``progress(component, done, total)`` after each token group.

    Returns:
        A ScoreMap whose ``scores[component][layer][token]`` is the mean restored probability, ``low`` the
        corrupted and ``high`` the clean probability, and ``layer_scores[component]`` the best score over the
        subject tokens. (ROME reads the last subject token; tokenizers split subjects differently, and
        SmolLM2 recalls the Eiffel Tower at "iffel", not at " Tower".)
    """
    import torch

    from cathrepo.models import model_device, num_layers

    started = time.perf_counter()
    components = check_components(components)
    device = model_device(model)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)  # (1, T)
    s0, s1 = subject_token_span(tokenizer, prompt, subject)
    n_layers, n_tokens = num_layers(model), ids.shape[1]
    window = default_window(model) if window is None else window
    scale = NOISE_FACTOR * embedding_std(model) if noise is None else float(noise)

    # 1. Clean run: the answer token, the high baseline and every state that can be restored.
    names = {component: module_names(model, component) for component in components}
    with torch.no_grad(), capture(model, [n for ns in names.values() for n in ns]) as clean:
        logits = model(input_ids=ids).logits[0, -1].float()
    answer = first_token_id(tokenizer, target) if target else int(logits.argmax())
    target = target if target else (tokenizer.decode([answer]).strip() or tokenizer.decode([answer]))
    high = float(torch.softmax(logits, -1)[answer])

    # 2. Corrupted run, once per noise sample; its KV cache seeds every restored suffix.
    gen = torch.Generator().manual_seed(seed)
    d_model = clean.outputs[names[components[0]][0]].shape[-1]
    noise_t = (torch.randn(samples, s1 - s0, d_model, generator=gen) * scale).to(device)
    precision = ("bfloat16" if bf16_is_fast(device) else "float32") if precision == "auto" else precision
    if precision not in ("float32", "bfloat16"):
        raise InvalidInputError(f"Unknown precision '{precision}'.", hint="Use float32, bfloat16 or auto.")
    runner = _Runner(model, ids, (s0, s1), noise_t, answer, precision == "bfloat16")
    low = runner.corrupted()

    # 3. Restored runs: one batched suffix forward per (token, component) covers all layers × samples.
    scores = {component: [[low] * n_tokens for _ in range(n_layers)] for component in components}
    todo = sorted({t for t in (tokens if tokens is not None else range(s0, n_tokens)) if s0 <= t < n_tokens})
    for done, t in enumerate(todo, 1):
        prefix = runner.prefix_cache(t)
        for component in components:
            span = 1 if component == "hidden" else window
            clean_at_t = {name: clean.outputs[name][0, t] for name in names[component]}
            probs = runner.restored(t, names[component], clean_at_t, span, prefix)  # (layers,)
            for layer in range(n_layers):
                scores[component][layer][t] = float(probs[layer])
        if progress:
            progress(",".join(components), done, len(todo))
    seconds = time.perf_counter() - started
    log.info("Causal trace of %r: %d layers × %d tokens × %s in %.1f s", prompt, n_layers, n_tokens,
             ",".join(components), seconds)
    return ScoreMap(
        method="causal_trace",
        prompt=prompt,
        subject=subject,
        target=target,
        tokens=token_strings(tokenizer, ids[0].tolist()),
        subject_range=(s0, s1),
        scores=scores,
        low=low,
        high=high,
        layer_scores={k: [max(scores[k][layer][s0:s1]) for layer in range(n_layers)] for k in components},
        meta={"samples": samples, "noise": scale, "window": window, "seed": seed, "precision": precision,
              "seconds": round(seconds, 3), "answer_token": answer},
    )


class _Runner:
    """The corrupted and restored forward passes of one trace (shared noise, shared cache)."""

    def __init__(self, model: Any, ids: torch.Tensor, subject: tuple[int, int], noise: torch.Tensor,
                 answer: int, bf16: bool) -> None:
        from cathrepo.models import family_for

        self.model, self.ids, self.subject, self.noise, self.answer = model, ids, subject, noise, answer
        self.bf16 = bf16
        self.samples = noise.shape[0]
        self.embed = family_for(model).embed

    def _noise_fn(self, start: int, repeat: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Add each row's noise to the subject tokens that fall inside positions [start, start + len)."""
        s0, s1 = self.subject

        def fn(emb: torch.Tensor) -> torch.Tensor:  # (rows, len, d); rows = samples × repeat
            lo, hi = max(s0, start), min(s1, start + emb.shape[1])
            if lo >= hi:
                return emb
            emb = emb.clone()
            rows = self.noise[:, lo - s0 : hi - s0].repeat_interleave(repeat, dim=0)
            emb[:, lo - start : hi - start] += rows.to(emb.dtype)
            return emb

        return fn

    def _run(self, edits: dict[str, Callable[[torch.Tensor], torch.Tensor]], **kwargs: Any) -> Any:
        import torch

        device = self.ids.device.type
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=self.bf16), \
                edit_output(self.model, edits):
            return self.model(**kwargs)

    def _prob(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.softmax(logits[:, -1].float(), -1)[:, self.answer]

    def corrupted(self) -> float:
        """Mean p(answer) of the corrupted run (the low baseline)."""
        rows = self.ids.expand(self.samples, -1)
        out = self._run({self.embed: self._noise_fn(0, 1)}, input_ids=rows, logits_to_keep=1)
        return float(self._prob(out.logits).mean())

    def prefix_cache(self, t: int) -> Any:
        """The KV cache of the corrupted positions [0, t), one row per noise sample (None for t = 0)."""
        from transformers import DynamicCache

        from cathrepo.models import cache_kwargs

        if t == 0:
            return None
        cache = DynamicCache()
        rows = self.ids[:, :t].expand(self.samples, -1)
        self._run({self.embed: self._noise_fn(0, 1)}, input_ids=rows, logits_to_keep=1,
                  **cache_kwargs(self.model, cache))
        return cache

    def restored(self, t: int, names: list[str], clean: dict[str, torch.Tensor], span: int,
                 cache: Any) -> torch.Tensor:
        """Mean p(answer) over samples for restoring token ``t`` at each layer (rows: sample-major)."""
        import torch

        from cathrepo.models import cache_kwargs

        n_layers, samples = len(names), self.samples
        layer_of_row = torch.arange(n_layers).repeat(samples)  # row = sample * n_layers + layer

        def restore(j: int) -> Callable[[torch.Tensor], torch.Tensor]:
            hit = torch.tensor([j in _window(int(lay), span, n_layers) for lay in layer_of_row])

            def fn(out: torch.Tensor) -> torch.Tensor:  # (rows, len, d): position 0 is token t
                out = out.clone()
                out[hit.to(out.device), 0] = clean[names[j]].to(out.dtype)
                return out

            return fn

        kwargs: dict[str, Any] = {}
        if cache is not None:
            prefix = copy.deepcopy(cache)  # the suffix run appends to it
            prefix.batch_repeat_interleave(n_layers)
            kwargs = cache_kwargs(self.model, prefix)
        suffix = self.ids[:, t:].expand(samples * n_layers, -1)
        edits = {self.embed: self._noise_fn(t, n_layers), **{names[j]: restore(j) for j in range(n_layers)}}
        out = self._run(edits, input_ids=suffix, logits_to_keep=1, **kwargs)
        return self._prob(out.logits).view(samples, n_layers).mean(0)
