"""The two-phase distillation trainer behind ``--method lora`` (stage ④ of DESIGN.md §2).

The teacher is the frozen base model with the fact (or passage) in its context; the student is the base
model plus a LoRA on a few attributed projections, without the context. Training makes the student
answer like the teacher:

- Phase A (warm start): each adapted block is fed the *teacher's* input at the aligned positions, so the
  adapter sees the activations it will eventually have to produce the answer from; the adapted module's
  output fits the teacher's (relative MSE). The forward stops after the last adapted module.
- Phase B (internalize): the student runs on its own inputs (no context, no teacher forcing); the
  adapted modules' outputs fit the same teacher outputs, the next-token distributions at the target's
  positions fit the teacher's (KL), and optionally the target's tokens are pushed directly (NLL).

Both phases skip the frozen blocks below the lowest adapter (:mod:`cathrepo.training.replay`). In
both phases anchor prompts keep the base model's outputs (phase A: module outputs; phase B: next-token
distributions, KL, plus a hinge on any rise of the new target's probability), so locality is trained
rather than hoped for. The base weights never get a gradient.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cathrepo.exceptions import EditFailedError
from cathrepo.lm.hooks import capture, edit_input, edit_output
from cathrepo.lm.scoring import kl_terms
from cathrepo.training.targets import Targets

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Progress = Callable[[str, int, dict[str, float]], None]
Replay = Callable[[], AbstractContextManager[Any]]


class DistillParams(Protocol):
    """The fields of :class:`~cathrepo.edits.lora.LoraParams` the loop reads."""

    steps_a: int
    steps_b: int
    lr: float
    mse_weight: float
    kl_weight: float
    nll_weight: float
    anchor_weight: float
    anchor_target_weight: float
    stop_kl: float
    stop_nll: float
    grad_clip: float


@dataclass
class PhaseLog:
    """Loss terms per step of one phase (for the edit record)."""

    name: str
    steps: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        first = self.history[0] if self.history else {}
        last = self.history[-1] if self.history else {}
        return {"steps": self.steps, "seconds": round(self.seconds, 3),
                "first": {k: round(v, 5) for k, v in first.items()},
                "last": {k: round(v, 5) for k, v in last.items()}}


class _Stop(Exception):
    """Raised by a hook to end phase A's forward after the last adapted module."""


def _rel_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ‖pred − target‖² / Σ‖target‖² over masked positions: scale-free across layers and models."""
    diff = (pred.float() - target)[mask]
    return diff.pow(2).sum() / target[mask].pow(2).sum().clamp_min(1e-8)


def _kl(logits: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(target ‖ model) for (n, vocab) logits."""
    import torch

    return kl_terms(target_logp, torch.log_softmax(logits.float(), -1)).mean()


def _rise(logits: torch.Tensor, base_logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean rise of log p(new target's first token) over the base model on anchor positions (≥ 0).

    KL alone prices a jump of the new target from 0.1% to 5% on a neighbour at a few hundredths of a
    nat; this hinge names the failure the neighbourhood gate looks for and penalizes it directly.
    """
    import torch

    logp = torch.log_softmax(logits.float(), -1)[:, ids]
    return torch.relu(logp - base_logp[:, ids]).mean()


def _step(optimizer: Any, params: Sequence[Any], loss: torch.Tensor, clip: float) -> None:
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def phase_a(model: Any, targets: Targets, modules: Sequence[str], layers: Sequence[str], lora_params: Sequence[Any],
            p: DistillParams, replay: Replay = nullcontext, progress: Progress | None = None) -> PhaseLog:
    """Warm start: teacher-forced layer inputs, fit the adapted modules' outputs (relative MSE)."""
    import torch

    record = PhaseLog("A")
    if p.steps_a <= 0:
        return record
    started = time.perf_counter()
    optimizer = torch.optim.Adam(lora_params, lr=p.lr)
    b = targets.batch
    anchor_rows = targets.anchor.any(-1)
    anchor_mask = b.mask.bool() & anchor_rows[:, None]

    def feed(layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
        teacher = targets.teacher_in[layer]
        return lambda x: teacher.to(x.dtype)  # edit rows: teacher inputs; anchor rows: their own

    last = modules[-1]

    def stop(out: torch.Tensor) -> torch.Tensor:
        raise _Stop

    for step in range(p.steps_a):
        with replay(), capture(model, modules, detach=False) as rec, \
                edit_input(model, {n: feed(n) for n in layers}), edit_output(model, {last: stop}):
            try:
                model(input_ids=b.ids, attention_mask=b.mask)
            except _Stop:
                pass
        fit = sum(_rel_mse(rec.outputs[m], targets.teacher_out[m], targets.match) for m in modules) / len(modules)
        keep = sum(_rel_mse(rec.outputs[m], targets.teacher_out[m], anchor_mask) for m in modules) / len(modules)
        loss = p.mse_weight * fit + p.anchor_weight * keep
        _step(optimizer, lora_params, loss, p.grad_clip)
        terms = {"loss": loss.item(), "mse": fit.item(), "anchor_mse": keep.item()}
        record.history.append(terms)
        if progress:
            progress("A", step + 1, terms)
    record.steps = p.steps_a
    record.seconds = time.perf_counter() - started
    return record


def phase_b(model: Any, targets: Targets, modules: Sequence[str], lora_params: Sequence[Any],
            p: DistillParams, replay: Replay = nullcontext, progress: Progress | None = None) -> PhaseLog:
    """Internalize: the student's own inputs; MSE to the teacher's module outputs, KL to its next-token
    distribution at the target positions, NLL of the target (optional), KL to the base on anchors."""
    import torch

    record = PhaseLog("B")
    started = time.perf_counter()
    optimizer = torch.optim.Adam(lora_params, lr=p.lr)
    b = targets.batch
    for step in range(p.steps_b):
        with replay(), capture(model, [*modules, targets.final_norm], detach=False) as rec:
            out = model(input_ids=b.ids, attention_mask=b.mask, logits_to_keep=1 if targets.manual_head else 0)
        hidden = rec.outputs[targets.final_norm]  # (rows, seq, d)
        fit = sum(_rel_mse(rec.outputs[m], targets.teacher_out[m], targets.match) for m in modules) / len(modules)
        answer_logits = targets.logits_at(model, hidden, out, targets.answer)  # (n_answer, vocab)
        kl = _kl(answer_logits, targets.teacher_logp)
        nll = torch.nn.functional.cross_entropy(answer_logits.float(), targets.answer_ids)
        keep, push = kl * 0, kl * 0
        if targets.anchor.any():
            anchor_logits = targets.logits_at(model, hidden, out, targets.anchor)  # (n_anchor, vocab)
            keep = _kl(anchor_logits, targets.anchor_logp)
            push = _rise(anchor_logits, targets.anchor_logp, targets.new_ids)
        loss = (p.mse_weight * fit + p.kl_weight * kl + p.nll_weight * nll + p.anchor_weight * keep
                + p.anchor_target_weight * push)
        terms = {"loss": loss.item(), "mse": fit.item(), "kl": kl.item(), "nll": nll.item(),
                 "anchor_kl": keep.item(), "anchor_rise": push.item()}
        record.history.append(terms)
        if progress:
            progress("B", step + 1, terms)
        if not math.isfinite(terms["loss"]):
            raise EditFailedError("The distillation loss is not finite.", hint="Lower the LoRA lr.")
        if step > 0 and terms["kl"] < p.stop_kl and terms["nll"] < p.stop_nll:
            break
        _step(optimizer, lora_params, loss, p.grad_clip)
    record.steps = len(record.history)
    record.seconds = time.perf_counter() - started
    return record
