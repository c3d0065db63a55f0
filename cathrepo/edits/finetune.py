"""``ft``: plain fine-tuning of one MLP down-projection, breadth-first over the batch.

The baseline issue 12 asks for, done as LocFT-BF does it (ICLR 2026, "Fine-tuning done right in model
editing"): only one MLP output projection is trained, with Adam on the new targets' negative
log-likelihood, **breadth-first**: epoch after epoch over every fact of the edit in shuffled
mini-batches, rather than each fact (or batch) to convergence before the next. As there, the target is
followed by the end-of-sequence token (``eos``), a mini-batch whose mean loss is under ``stop_loss``
takes no step, and the training ends at the first epoch whose mean loss is under it. Beside the bare
prompt each fact can also be trained under generated context prefixes (``n_context``, 0 as LocFT-BF).
Nothing else keeps the change local (no covariance, no KL): that is the point of a baseline.

Where to train is LocFT-BF's other finding (the location matters more than anything but the pipeline);
its Llama-3-8B recipe trains layer 22 of 32 at 5e-4 in mini-batches of 100 over a few thousand facts.
On the embedded model the defaults were chosen on CounterFact records 5000–5099 (BENCHMARKS.md, "The
fine-tuning baseline done as LocFT-BF does it"): layer 4 of 30 (``depth_fraction`` 0.15) held the most
of what the model knew among layers 4, 10, 20 and 25, and a hundred facts need mini-batches of 10 rows
(ten steps an epoch) and a rate of 2e-3 to be learned in 25 epochs.

The mini-batches are drawn once (seeded) and visited in a new order every epoch, so the layers under the
trained one run once per mini-batch and are replayed after (LocFT-BF reshuffles the rows themselves).

The trained change is dense; it is stored exactly as low-rank factors from its SVD (``B = U S``,
``A = Vᵀ``, every singular value above ``1e-6`` of the largest), so PEFT and the repository read it as
any other delta.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cathrepo.delta import Delta, LowRank
from cathrepo.edits.base import EDIT_METHODS, EditEnv, EditMethod, EditResult, require_writes
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact

log = logging.getLogger(__name__)


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class FinetuneParams:
    """Parameters of the fine-tuning baseline; ``layer=None`` means ``depth_fraction`` of the depth."""

    layer: int | None = _help("Layer whose MLP output projection is trained (None: depth_fraction of the depth).", None)
    depth_fraction: float = _help("With layer=None, the layer as a fraction of the depth.", 0.15)
    lr: float = _help("Adam learning rate.", 2e-3)
    epochs: int = _help("Most passes over every row of the edit.", 25)
    minibatch: int = _help("Rows (prompt, or prefix + prompt, with its target) per Adam step.", 10)
    stop_loss: float = _help("A mini-batch under this mean target NLL takes no step; an epoch under it "
                             "ends the training.", 0.01)
    eos: bool = _help("Train the target followed by the end-of-sequence token (LocFT-BF's targets).", True)
    n_context: int = _help("Generated context prefixes each prompt is also trained under (0: the bare prompt).", 0)
    context_tokens: int = _help("Length in tokens of each context prefix.", 10)
    seed: int = _help("Seed of the context-prefix sampling and of the mini-batches and their order.", 0)

    def __post_init__(self) -> None:
        if self.layer is not None and self.layer < 0:
            raise InvalidInputError(f"ft layer {self.layer} is negative.", hint="Pass a layer index >= 0.")
        if not 0.0 <= self.depth_fraction < 1.0 or self.lr <= 0 or self.epochs <= 0 or self.minibatch <= 0:
            raise InvalidInputError("ft parameters: depth_fraction in [0, 1); lr, epochs and minibatch positive.",
                                    hint="For example --param lr=2e-3 --param epochs=25 --param minibatch=10.")
        if self.n_context < 0 or self.stop_loss < 0:
            raise InvalidInputError("ft parameters n_context and stop_loss must not be negative.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@EDIT_METHODS.register
class FinetuneMethod(EditMethod):
    """Fine-tune one MLP down-projection on the batch's targets, breadth-first (the honest baseline)."""

    name = "ft"
    params_cls = FinetuneParams
    batched = True

    def compute(self, model: Any, tokenizer: Any, facts: Sequence[Fact], env: EditEnv) -> EditResult:
        import torch

        from cathrepo.edits.rome.context import context_prefixes
        from cathrepo.edits.rome.covariance import stats_dir
        from cathrepo.lm.hooks import replayed
        from cathrepo.lm.replay import layers_below
        from cathrepo.models import cache_dir, family_for, get_module, num_layers

        require_writes(facts, "ft")
        p: FinetuneParams = self.params
        depth = num_layers(model)
        layer = round(p.depth_fraction * (depth - 1)) if p.layer is None else p.layer
        if layer >= depth:
            raise InvalidInputError(f"ft layer {layer} does not exist; the model has {depth} layers.",
                                    hint=f"Pass a layer between 0 and {depth - 1}.")
        module_name = family_for(model).layer_name("mlp_out", layer)
        module = get_module(model, module_name)
        prefixes = context_prefixes(model, tokenizer, p.n_context, p.context_tokens, p.seed,
                                    stats_dir(env.cache_dir or cache_dir(), env.base_hash))
        rows = _row_specs(tokenizer, facts, prefixes, p.eos)
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(p.seed)).tolist()
        batches = [_padded(tokenizer, [rows[i] for i in order[k : k + p.minibatch]])
                   for k in range(0, len(order), p.minibatch)]
        below = layers_below(model, module_name)
        start = time.perf_counter()
        weight = module.weight
        original = weight.detach().clone()
        flags = [q.requires_grad for q in model.parameters()]
        for q in model.parameters():
            q.requires_grad_(False)
        shuffle = torch.Generator().manual_seed(p.seed + 1)
        lower: list[dict[str, Any]] = [{} for _ in batches]  # the layers under the trained one: once per batch
        epoch, steps, mean = 0, 0, float("inf")
        try:
            weight.requires_grad_(True)
            opt = torch.optim.Adam([weight], lr=p.lr)
            for epoch in range(1, p.epochs + 1):  # noqa: B007 - the last value is reported
                total = 0.0
                for k in torch.randperm(len(batches), generator=shuffle).tolist():
                    with replayed(model, below, lower[k]):
                        loss = _row_nll(model, batches[k]).mean()
                    total += float(loss.detach()) * batches[k]["n"]
                    if float(loss.detach()) >= p.stop_loss:
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        steps += 1
                mean = total / len(rows)
                if mean < p.stop_loss:
                    break
            change = (weight.detach() - original).float()
        finally:
            with torch.no_grad():
                weight.copy_(original)
            weight.grad = None  # nothing of the training stays on the caller's model
            weight.requires_grad_(False)
            for q, flag in zip(model.parameters(), flags, strict=True):
                q.requires_grad_(flag)
        if family_for(model).conv1d:
            change = change.T  # Conv1D stores (in, out); deltas are (out, in)
        factor = exact_factors(change)
        info = {"epochs": epoch, "steps": steps, "last_epoch_nll": round(mean, 5), "rank": factor.rank, "layer": layer,
                "change_norm_ratio": round(float(change.norm() / original.float().norm()), 5),
                "seconds": round(time.perf_counter() - start, 3)}
        log.info("ft %d fact(s) at layer %d: %s", len(facts), layer, info)
        data = [{"role": "rewrite", "prompt": prefix + f.prompt, "target": f.target_new} for f in facts for prefix in prefixes]
        return EditResult(delta=Delta({module_name: factor}, base_model=getattr(model, "name_or_path", "")),
                          site={"layers": [layer], "modules": [module_name], "component": "mlp_out"},
                          info=info, data=data)


def exact_factors(change: Any, tol: float = 1e-6) -> LowRank:
    """``change`` (out, in) as ``B = U S``, ``A = Vᵀ`` over its singular values above ``tol`` of the largest."""
    import torch

    u, s, vh = torch.linalg.svd(change.double(), full_matrices=False)
    keep = max(1, int((s > tol * s[0]).sum())) if s.numel() and s[0] > 0 else 1
    return LowRank(B=(u[:, :keep] * s[:keep]).float().contiguous(), A=vh[:keep].float().contiguous())


def _row_specs(tokenizer: Any, facts: Sequence[Fact], prefixes: Sequence[str], eos: bool,
               ) -> list[tuple[list[int], list[int]]]:
    """(``prefix + prompt`` ids, target ids) of every row, the target ending in EOS when ``eos``."""
    from cathrepo.lm.tokens import continuation_ids

    end = [tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else []
    specs: list[tuple[list[int], list[int]]] = []
    for fact in facts:
        target = continuation_ids(tokenizer, fact.target_new) + end
        specs.extend((tokenizer(prefix + fact.prompt)["input_ids"], target) for prefix in prefixes)
    return specs


def _padded(tokenizer: Any, specs: Sequence[tuple[list[int], list[int]]]) -> dict[str, Any]:
    """Right-padded ``context + target`` rows and the positions that predict the target tokens."""
    import torch

    from cathrepo.lm.tokens import pad, pad_id

    batch = pad([ids + target[:-1] for ids, target in specs], pad_id(tokenizer))
    rows = [i for i, (_, t) in enumerate(specs) for _ in t]
    positions = [len(c) - 1 + j for c, t in specs for j in range(len(t))]
    tokens = [tok for _, t in specs for tok in t]
    return {"ids": batch.ids, "mask": batch.mask, "rows": torch.tensor(rows), "positions": torch.tensor(positions),
            "tokens": torch.tensor(tokens), "n": len(specs)}


def _row_nll(model: Any, batch: dict[str, Any]) -> Any:
    """Mean target-token NLL of each row under the model as it is now (with gradients)."""
    import torch

    from cathrepo.lm.scoring import hidden_and_head
    from cathrepo.models import model_device

    device = model_device(model)
    ids, mask = batch["ids"].to(device), batch["mask"].to(device)
    split = hidden_and_head(model)
    if split is None:
        logits = model(input_ids=ids, attention_mask=mask).logits[batch["rows"], batch["positions"]]
    else:  # the head (a vocabulary-wide product) only where a target token is predicted
        body, head = split
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = head(hidden[batch["rows"], batch["positions"]])
    logp = logits.log_softmax(-1)[torch.arange(len(batch["tokens"])), batch["tokens"].to(logits.device)]
    total = torch.zeros(batch["n"], device=logp.device).index_add(0, batch["rows"].to(logp.device), -logp)
    count = torch.bincount(batch["rows"], minlength=batch["n"]).to(logp.device)
    return total / count
