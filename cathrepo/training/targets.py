"""What the trainer fits, computed once from the frozen base model before any adapter exists (stage ④).

- From the teacher (the fact or passage in context): the adapted modules' outputs and the adapted
  layers' inputs at the positions aligned with the student's tokens, and the next-token log-distribution
  at the positions that predict the target's tokens.
- From the base model on the anchors: the next-token log-distributions (what must not move) and the
  adapted modules' outputs (what phase A keeps).

Tensors are laid out in the student's padded batch, (batch, seq, ...), so the training loop indexes them
with the same masks it applies to the student's activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cathrepo.lm.hooks import capture
from cathrepo.lm.scoring import head_logits
from cathrepo.lm.tokens import Batch, pad
from cathrepo.training.data import Anchor, EditExample

if TYPE_CHECKING:
    import torch

MATCH_POSITIONS = ("subject", "last_subject", "from_subject")


@dataclass
class Targets:
    """Everything the two phases fit, in the layout of the student batch ``edit`` + ``anchor`` rows.

    Attributes:
        batch: student edit rows followed by anchor rows.
        n_edit: number of edit rows (the first rows of ``batch``).
        match: (rows, seq) bool, where the adapted modules' outputs are fitted (edit rows only).
        answer: (rows, seq) bool, positions whose next token is a target token (edit rows).
        answer_ids: (n_answer,) the target token at each ``answer`` position, in mask order.
        new_ids: (n_new,) the first token of every edited target (must not rise on the anchors).
        anchor: (rows, seq) bool, positions whose distribution must not move (anchor rows): the
            prompt's last position and, for a neighbour with a known answer, the answer's positions.
        teacher_out: module -> (rows, seq, d) teacher outputs at aligned positions (0 elsewhere);
            on anchor rows the base model's own outputs.
        teacher_in: layer module -> (rows, seq, d) the teacher's layer inputs at aligned positions;
            on anchor rows the base model's own inputs.
        teacher_logp: (n_answer, vocab) the teacher's next-token log-distribution at ``answer``.
        anchor_logp: (n_anchor, vocab) the base model's log-distribution at ``anchor``.
        residual: (rows, seq, d) the base model's input to the first adapted block (for layer replay).
        base_logits: (rows, seq, vocab) the base model's logits on the batch (checks the replay; dropped
            after that).
        final_norm: the module whose output the unembedding reads.
        manual_head: True when applying the output embedding to ``final_norm``'s output at the needed
            positions reproduces the model's logits (then training computes only those, a fifth of a
            small model's work per token otherwise).
    """

    batch: Batch
    n_edit: int
    match: torch.Tensor
    answer: torch.Tensor
    answer_ids: torch.Tensor
    new_ids: torch.Tensor
    anchor: torch.Tensor
    teacher_out: dict[str, torch.Tensor]
    teacher_in: dict[str, torch.Tensor]
    teacher_logp: torch.Tensor
    anchor_logp: torch.Tensor
    residual: torch.Tensor | None = None
    base_logits: torch.Tensor | None = None
    final_norm: str = ""
    manual_head: bool = False

    def logits_at(self, model: Any, hidden: torch.Tensor, out: Any, mask: torch.Tensor) -> torch.Tensor:
        """(n, vocab) logits at the ``mask`` positions, from the final norm's output when possible."""
        if not self.manual_head:
            return out.logits[mask]
        return head_logits(model, hidden[mask])






def _match_positions(ex: EditExample, how: str) -> list[int]:
    start, end = ex.aligned.subject
    if how == "subject":
        return list(range(start, end))
    if how == "last_subject":
        return [end - 1]
    return list(range(start, len(ex.aligned.student) - 1))  # from_subject (the last target token predicts nothing)


def compute_targets(
    model: Any,
    tokenizer: Any,
    examples: Sequence[EditExample],
    anchors: Sequence[Anchor],
    modules: Sequence[str],
    layers: Sequence[str],
    *,
    match: str = "subject",
) -> Targets:
    """Run the teacher and the base model once (no gradients) and lay out what the trainer fits.

    Args:
        model: the base model, without adapters.
        tokenizer: its tokenizer (for the pad id).
        examples: the teacher/student pairs.
        anchors: the anchor prompts.
        modules: the adapted modules (their outputs are fitted).
        layers: the blocks that hold them (their inputs are fed in phase A), one per module, lowest first.
        match: which student positions fit the teacher's module outputs: "subject" tokens, the
            "last_subject" token, or everything "from_subject" on.
    """
    import torch

    from cathrepo.models import family_for, model_device

    device = model_device(model)
    norm = family_for(model).final_norm
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    student = pad([e.aligned.student for e in examples] + [a.ids for a in anchors], pad_id, device)
    rows, width = student.ids.shape
    n_edit = len(examples)
    teacher = pad([e.aligned.teacher for e in examples], pad_id, device)

    names = list(dict.fromkeys([*modules, *layers]))
    with torch.no_grad(), capture(model, names, inputs=True) as rec:
        t_logits = model(input_ids=teacher.ids, attention_mask=teacher.mask).logits.float()
    t_out = {m: rec.outputs[m] for m in modules}
    t_in = {b: rec.inputs[b] for b in layers}
    with torch.no_grad(), capture(model, [*names, norm], inputs=True) as base:
        s_logits = model(input_ids=student.ids, attention_mask=student.mask).logits.float()

    match_mask = torch.zeros(rows, width, dtype=torch.bool, device=device)
    answer = torch.zeros_like(match_mask)
    anchor = torch.zeros_like(match_mask)
    index = torch.zeros(rows, width, dtype=torch.long, device=device)  # student position -> teacher position
    answer_ids, teacher_logp = [], []
    for r, ex in enumerate(examples):
        al = ex.aligned
        n = len(al.student)
        index[r, :n] = torch.tensor([i + al.shift if i >= al.start else i for i in range(n)])
        match_mask[r, _match_positions(ex, match)] = True
        for p in range(al.prompt_len - 1, n - 1):
            answer[r, p] = True
            answer_ids.append(al.student[p + 1])
            teacher_logp.append(torch.log_softmax(t_logits[r, index[r, p]], -1))
    for j, a in enumerate(anchors):  # the next token after the prompt, and the known answer's tokens
        r = n_edit + j
        anchor[r, a.prompt_len - 1 : max(a.prompt_len, len(a.ids) - 1)] = True
        index[r, : len(a.ids)] = torch.arange(len(a.ids))

    def layout(teacher_values: torch.Tensor, base_values: torch.Tensor) -> torch.Tensor:
        out = base_values.clone()  # (rows, width, d): anchors and padding keep the base values
        for r in range(n_edit):
            n = len(examples[r].aligned.student)
            out[r, :n] = teacher_values[r, index[r, :n]]
        return out

    needed = answer | anchor
    with torch.no_grad():
        manual = head_logits(model, base.outputs[norm][needed]).float()
    manual_ok = bool(torch.allclose(manual, s_logits[needed], atol=1e-4, rtol=1e-4))
    return Targets(
        batch=student,
        n_edit=n_edit,
        match=match_mask,
        answer=answer,
        answer_ids=torch.tensor(answer_ids, dtype=torch.long, device=device),
        new_ids=torch.tensor(sorted({e.aligned.target[0] for e in examples}), dtype=torch.long, device=device),
        anchor=anchor,
        teacher_out={m: layout(t_out[m], base.outputs[m]) for m in modules},
        teacher_in={b: layout(t_in[b], base.inputs[b]) for b in layers},
        teacher_logp=torch.stack(teacher_logp),
        anchor_logp=torch.log_softmax(s_logits[anchor], -1),
        residual=base.inputs[layers[0]] if layers else None,
        base_logits=s_logits,
        final_norm=norm,
        manual_head=manual_ok,
    )
