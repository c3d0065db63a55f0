"""Explain an answer: which active edits the model at a revision (and tenant) carries, and which caused it.

The causal effect of one edit is measured by ablation (DESIGN.md §2, serve): the materialized model
answers the prompt greedily; that edit's delta alone is subtracted from the weights (where the revision
restrains its stack, the restrained sum is swapped for the one of the other edits), the answer's tokens
are scored teacher-forced (Δ log-prob = without − with, in nats), and the delta is put back (the undo
record restores the touched weights bit for bit). Greedy decoding keeps its answer exactly when every
answer token (and the stop token it ended on) is still the arg-max after the same prefix, so one forward
pass per edit says whether the answer changes; the new answer is decoded only for those that change it.
The edits whose removal changes the answer are the ``cause``.

With many edits, most cannot matter to a prompt, and a forward pass each would be slow; a screen picks
which to measure (:mod:`cathrepo.repo.explain_screen`). An edit is screened out only when its subject is
not in the prompt and its delta moves the prompt's activations at its own modules by less than
``threshold`` of their norm, and only if removing every screened edit at once neither changes the answer
nor moves its log-prob by more than ``tolerance``; otherwise every edit is measured. Screened edits are
reported as screened, never as zero-effect. docs/explain.md has the user's view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import InvalidInputError

if TYPE_CHECKING:
    import torch

    from cathrepo.delta import Delta
    from cathrepo.repo import Repo
    from cathrepo.repo.state import ActiveEdit

#: Relative activation change below which an edit whose subject is not in the prompt is screened out. On
#: SmolLM2-135M, ROME edits about other subjects measured 0.044 and 0.052 on a prompt whose own edit
#: measured 0.74 (tests/slow/test_explain_real.py); removing them moved the answer by under 0.004 nats.
THRESHOLD = 0.15
#: Largest |Δ log-prob| (nats) of the answer that removing all screened edits at once may cause.
TOLERANCE = 0.05


@dataclass(frozen=True)
class EditEffect:
    """One active edit and what removing it alone does to the answer.

    Attributes:
        status: "measured" or "screened" (not measured: see ``screen``).
        delta_logprob: log p(answer | prompt) without the edit minus with it, in nats (None if screened);
            negative: the edit made this answer more likely.
        changes_answer: whether the greedy answer differs without the edit (None if screened).
        answer_without: the greedy answer without it, when it differs.
        screen: the screen's evidence: ``subject_in_prompt`` and ``activation`` (the largest relative
            change the delta makes to the prompt's activations at its modules; None when not computed).
        provenance: source, author, created, risk, confidence, method, signature, approvals.
    """

    id: str
    summary: str
    status: str
    delta_logprob: float | None
    changes_answer: bool | None
    answer_without: str | None
    screen: dict[str, Any]
    provenance: dict[str, Any]


@dataclass(frozen=True)
class Explanation:
    """The answer to a prompt at a revision (and tenant), the edits active for it and their effects."""

    prompt: str
    answer: str
    answer_logprob: float
    rev: str
    commit: str
    tenant: str | None
    base_answer: str
    edits: list[EditEffect] = field(default_factory=list)
    screened_check: dict[str, Any] = field(default_factory=dict)

    @property
    def cause(self) -> list[str]:
        """The edits whose removal alone changes the answer, in stack order."""
        return [e.id for e in self.edits if e.changes_answer]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cause"] = self.cause
        return data


def explain(repo: Repo, prompt: str, rev: str = "HEAD", *, tenant: str | None = None, max_new_tokens: int = 16,
            screen: bool = True, threshold: float = THRESHOLD, tolerance: float = TOLERANCE) -> Explanation:
    """Answer ``prompt`` with the model materialized at ``rev`` for ``tenant`` and measure each active
    edit's causal effect on that answer (``screen``: only the edits that can matter; see the module)."""
    from cathrepo.delta import apply_deltas
    from cathrepo.repo.explain_screen import activation_scores, provenance
    from cathrepo.repo.materialize import materialize

    if not prompt.strip():
        raise InvalidInputError("The prompt is empty.", hint="Give the text the model should continue.")
    # 1. the served model and its greedy answer, as token ids (ending with the stop token, if it stopped)
    state = materialize(repo, rev, tenant=tenant)
    model, tokenizer, edits = state.model, state.tokenizer, state.edits
    prompt_ids, answer_ids = _answer(model, tokenizer, prompt, max_new_tokens)
    seq = prompt_ids + answer_ids
    full = _score(model, seq, len(prompt_ids))
    without = _without(repo, state)
    # 2. the base model's answer (every edit removed), for contrast
    record = apply_deltas(model, without({e.id for e in edits})) if edits else None
    try:
        base_answer = _decode(tokenizer, _answer(model, tokenizer, prompt, max_new_tokens)[1])
    finally:
        if record is not None:
            record.remove(model)
    # 3. the screen: which edits to measure, checked by removing all the others at once
    scores = activation_scores(model, seq, edits) if screen and edits else {}
    lowered = prompt.lower()
    subject_in = {e.id: _subject(e).lower() in lowered if _subject(e) else False for e in edits}
    out = [e for e in edits if screen and not subject_in[e.id] and _below(scores.get(e.id), threshold)]
    check: dict[str, Any] = {"screened": len(out), "threshold": threshold, "tolerance": tolerance}
    if out:
        with _changed(model, without({e.id for e in out})):
            joint = _score(model, seq, len(prompt_ids))
        check.update(delta_logprob=joint.logprob - full.logprob, changes_answer=joint.changes(full))
        if joint.changes(full) or abs(joint.logprob - full.logprob) > tolerance:
            check["failed"] = True  # the screen missed an effect on this prompt: measure every edit
            out = []
    screened = {e.id for e in out}
    # 4. each remaining edit removed alone, scored in one pass; decoded again only when the answer changes
    effects = []
    origin = provenance(repo, state.commit, edits, verified=state.verified)
    for edit in edits:
        evidence = {"subject_in_prompt": subject_in[edit.id], "activation": scores.get(edit.id)}
        if edit.id in screened:
            effects.append(EditEffect(edit.id, edit.record.summary, "screened", None, None, None, evidence,
                                      origin[edit.id]))
            continue
        with _changed(model, without({edit.id})):
            alone = _score(model, seq, len(prompt_ids))
            changes = alone.changes(full)
            other = _decode(tokenizer, _answer(model, tokenizer, prompt, max_new_tokens)[1]) if changes else None
        effects.append(EditEffect(edit.id, edit.record.summary, "measured", alone.logprob - full.logprob,
                                  changes, other, evidence, origin[edit.id]))
    return Explanation(prompt, _decode(tokenizer, answer_ids), full.logprob, rev, state.commit, tenant,
                       base_answer, effects, check)


def _without(repo: Repo, state: Any) -> Callable[[set[str]], list[Delta]]:
    """For a set of edit ids, the deltas that turn the served model into the one without those edits: each
    one's delta subtracted; where the revision restrains its stack (``[stack] restrain``), the carried sum
    taken off and the remaining edits' carried sum put on, so the ablation is exact there too."""
    from cathrepo.repo.packs import stack_deltas

    restrained = bool(repo.config_at(state.commit).stack.restrain)

    def without(ids: set[str]) -> list[Delta]:
        if not restrained:
            return [e.delta.scaled(-1.0) for e in state.edits if e.id in ids]
        rest = [e for e in state.edits if e.id not in ids]
        return [*(d.scaled(-1.0) for d in state.deltas), *(stack_deltas(repo, state.commit, rest) if rest else [])]

    return without


def _below(score: float | None, threshold: float) -> bool:
    return score is not None and score < threshold


def _subject(edit: ActiveEdit) -> str:
    return str(edit.record.fact.get("subject") or "").strip()


@dataclass(frozen=True)
class _Score:
    logprob: float  # sum of log p(answer token | prefix) over the answer
    argmax: tuple[int, ...]  # the arg-max token after each prefix

    def changes(self, served: _Score) -> bool:
        """Whether greedy decoding leaves the served answer: some arg-max differs from the served model's
        (compared with its arg-max, not the decoded tokens, so last-bit differences between the cached
        decoder and this full pass cannot count as a change)."""
        return self.argmax != served.argmax


def _answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy answer ids); the answer ends with the stop token when decoding stopped on one,
    so that stopping earlier or later counts as a different answer."""
    from cathrepo.lm.decoding import EncodedPrompts

    encoded = EncodedPrompts.of(model, tokenizer, [prompt], max_new_tokens)
    answer = encoded.decode(model)[0]
    if len(answer) < max_new_tokens and encoded.stop:
        logits = _logits(model, encoded.ids[0] + answer)[-1]
        answer = [*answer, int(logits.argmax())]
    return encoded.ids[0], answer


def _logits(model: Any, seq: Sequence[int]) -> torch.Tensor:
    import torch

    from cathrepo.models import model_device

    with torch.no_grad():
        ids = torch.tensor([list(seq)], device=model_device(model))
        return model(input_ids=ids).logits[0].float()  # (seq, vocab)


def _score(model: Any, seq: Sequence[int], n_prompt: int) -> _Score:
    """Teacher-forced log-prob of ``seq[n_prompt:]`` after ``seq[:n_prompt]`` and whether greedy decoding
    would leave it."""
    import torch

    logits = _logits(model, seq)[n_prompt - 1 : len(seq) - 1]  # (answer, vocab)
    target = torch.tensor(list(seq[n_prompt:]), device=logits.device)
    logp = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
    return _Score(float(logp.sum()), tuple(int(t) for t in logits.argmax(-1)))


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return str(tokenizer.decode(list(ids), skip_special_tokens=True)).strip()


@contextmanager
def _changed(model: Any, deltas: Sequence[Delta]) -> Iterator[None]:
    """The model with ``deltas`` added to its weights (from :func:`_without`); the touched weights restored
    bit for bit."""
    from cathrepo.delta import apply_deltas

    record = apply_deltas(model, list(deltas))
    try:
        yield
    finally:
        record.remove(model)
