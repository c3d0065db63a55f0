"""Forget methods built on ROME: ``negate``, ``suppress`` and ``replace`` (stage ④ of DESIGN.md §2).

Each takes facts with ``action="forget"`` (``target_new`` names the answer that must go) and returns a
:class:`~cathrepo.delta.Delta` like any edit, so a forget is gated, signed and reverted like an edit:

- ``negate``: ROME *toward* the answer (with a firmer stop than an edit, so the delta is not near zero on a
  fact the model already knows), stored at a negative ``scale`` (task-vector negation, Ilharco et al. 2023).
  :func:`cathrepo.repo.forget.forget` searches the smallest ``|scale|`` the forgetting gates accept.
- ``suppress``: ROME toward an abstention (``abstention``, set per repository under
  ``[edit.params.suppress]`` in cathrepo.toml).
- ``replace``: ROME toward ``replacement``; the forgetting gates then demand the old answer is gone from
  every probe, not only outranked.

``suppress`` and ``replace`` also push the old answer down where ROME optimises (``away``: its first token
at most that probability on the prompt, its phrasings and the training formats), so the new answer does
not merely outrank it.

The methods never mutate the model (ROME does not).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cathrepo.edits.base import EDIT_METHODS, EditEnv, EditMethod, EditResult
from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact

#: What ``suppress`` teaches by default: one token in the Llama, GPT-2 and Gemma tokenizers (so ROME's
#: target is short and the generation gates read it whole), and a plain completion of most relation
#: prompts ("The Eiffel Tower is located in the city of unknown"), unlike "I don't know", which a cloze
#: prompt does not continue into and which costs ROME four target tokens.
DEFAULT_ABSTENTION = "unknown"
#: The old answer's first-token probability ``suppress`` and ``replace`` push it under (ROME's ``away_prob``).
DEFAULT_AWAY = 0.01
#: ``negate``'s scales: the strongest finds the layers where negation forgets at all, then the others are tried
#: there, smallest change first, until the gates pass (:func:`cathrepo.repo.forget.attempt_forget`).
DEFAULT_SCALES = (-0.5, -1.0, -2.0, -4.0)


def _h(default: Any, help: str) -> Any:
    if isinstance(default, (dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ForgetParams:
    """Parameters of the ROME-based forget methods (recorded in edit.json with the mode)."""

    mode: str = _h("", "The forget mode (negate, suppress, replace, erase); set by the method.")
    layer: int | None = _h(None, "Layer whose MLP output projection is edited (None: family default).")
    rome: Mapping[str, Any] = _h({}, "ROME parameter overrides for the underlying edit.")
    scale: float = _h(-1.0, "negate: the factor the learned delta is stored at (negative: negation).")
    scales: tuple[float, ...] = _h(DEFAULT_SCALES, "negate: the scales searched (the strongest first over the "
                                                   "layers, then the others where it forgot, smallest first).")
    learn_prob: float = _h(0.95, "negate: ROME learns the answer until every prompt gives it this probability "
                                 "(an edit's 0.5 leaves a known fact's delta near zero).")
    abstention: str = _h(DEFAULT_ABSTENTION, "suppress: the answer taught instead of the forgotten one.")
    replacement: str = _h("", "replace: the new answer (required).")
    formats: bool = _h(True, "ROME is also optimised with the prompt in three other formats (a question, a chat "
                             "turn, after examples), worded unlike the forgetting gates' format shifts, so the "
                             "answer goes however the question is put (off: the cloze prompt and its phrasings).")

    away: float = _h(DEFAULT_AWAY, "suppress, replace: ROME also pushes the old answer's first token under this "
                                   "probability on every prompt it is optimised on (ROME's away_prob; 0: off, the "
                                   "new answer only has to rise above it).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "rome", dict(self.rome))
        if not 0.0 <= self.away < 1.0:
            raise InvalidInputError(f"away {self.away} is outside [0, 1).")
        if not 0.0 < self.learn_prob < 1.0:
            raise InvalidInputError(f"learn_prob {self.learn_prob} is outside (0, 1).")


def require_forgets(facts: Sequence[Fact], method: str) -> None:
    """Refuse an empty call, or a fact to write, for a method that forgets."""
    if not facts:
        raise InvalidInputError("No facts to forget.")
    if any(f.action != "forget" for f in facts):
        raise InvalidInputError(f"{method} forgets facts; it cannot write one.",
                                hint="Use `cathrepo forget`, or an edit method for `cathrepo edit`.")


#: The question a forget is optimised in (the gates ask "Question: complete the sentence ...").
QUESTION_WRAPPER = "Q: How does this sentence end? {prompt} ...\nA: {prompt}"
#: The chat turn (the gates ask "Complete the sentence: ...").
CHAT_REQUEST = "Finish this sentence: {prompt}"
#: Which known facts serve as the examples before the prompt (the gates take the first three others).
SHOTS = slice(10, 16)


def format_wrappers(tokenizer: Any, facts: Sequence[Fact], shots: int = 3) -> tuple[str, ...]:
    """ROME's ``wrappers`` for a forget: the prompt as a question, in a chat turn (when the tokenizer has a
    template) and after ``shots`` known facts (none about the facts' subjects), each worded unlike the
    forgetting gates' format shifts, so those stay a test of what the forget did not see."""
    from cathrepo.facts.probes import load_known_facts
    from cathrepo.lm.tokens import user_turn

    out = [QUESTION_WRAPPER]
    if (head := user_turn(tokenizer, CHAT_REQUEST)) is not None:
        out.append(f"{head}{{prompt}}")
    subjects = [f.subject.lower() for f in facts]
    known = [k for k in load_known_facts(part="protect")[SHOTS]
             if not any(s in f"{k.prompt} {k.answer}".lower() for s in subjects)]
    if known:
        out.append("".join(f"{k.prompt} {k.answer}.\n" for k in known[:shots]) + "{prompt}")
    return tuple(out)


class _RomeForget(EditMethod):
    """A forget computed as a ROME edit of a rewritten fact."""

    params_cls: ClassVar[type] = ForgetParams
    mode: ClassVar[str] = ""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.params = dataclasses.replace(self.params, mode=self.mode)

    @classmethod
    def default_params(cls, model: Any) -> ForgetParams:
        return ForgetParams(mode=cls.mode)  # recorded in edit.json: the mode is in the record's params

    def target(self, fact: Fact) -> str:
        """What ROME writes for ``fact``."""
        raise NotImplementedError

    def rome_overrides(self) -> dict[str, Any]:
        return {"away_prob": self.params.away}  # the old answer goes (negate, which learns it, overrides this)

    def compute(self, model: Any, tokenizer: Any, facts: Sequence[Fact], env: EditEnv) -> EditResult:
        from cathrepo.edits.rome.method import RomeMethod

        require_forgets(facts, self.name)
        p: ForgetParams = self.params
        overrides = {**self.rome_overrides(), **({"wrappers": format_wrappers(tokenizer, facts)} if p.formats else {}),
                     **p.rome, **({"layer": p.layer} if p.layer is not None else {})}
        rome = RomeMethod(RomeMethod.params_for(model, overrides))
        rewritten = [dataclasses.replace(f, action="edit", target_new=self.target(f), target_true=f.target_new)
                     for f in facts]
        result = rome.compute(model, tokenizer, rewritten, env)
        info = {**result.info, "mode": self.mode, "rome_targets": [f.target_new for f in rewritten]}
        return self.finish(dataclasses.replace(result, info=info, site={**result.site, "mode": self.mode}))

    def finish(self, result: EditResult) -> EditResult:
        return result


#: The facts ``negate`` has learned inside :func:`learned_once`, by what was learned (not the scale).
_LEARNED: ContextVar[dict[tuple[str, str], EditResult] | None] = ContextVar("negate_learned", default=None)


@contextlib.contextmanager
def learned_once() -> Iterator[None]:
    """Inside, ``negate`` learns each fact once and only rescales it for another scale: the scale search
    of :func:`cathrepo.repo.forget.attempt_forget`, on a model whose weights do not change meanwhile (a
    retry at another layer or with other parameters learns anew)."""
    token = _LEARNED.set({})
    try:
        yield
    finally:
        _LEARNED.reset(token)


@EDIT_METHODS.register
class NegateMethod(_RomeForget):
    """Task-vector negation: learn the fact with ROME, store the delta at a negative scale."""

    name = "negate"
    mode = "negate"

    def compute(self, model: Any, tokenizer: Any, facts: Sequence[Fact], env: EditEnv) -> EditResult:
        memo = _LEARNED.get()
        key = (repr(list(facts)), repr(dataclasses.replace(self.params, scale=1.0)))
        if memo is not None and key in memo:
            learned = memo[key]
            return self.finish(dataclasses.replace(learned, info={**learned.info, "learned_once": True}))
        unit = NegateMethod(dataclasses.replace(self.params, scale=1.0))
        learned = _RomeForget.compute(unit, model, tokenizer, facts, env)  # the delta as learned (scale 1)
        if memo is not None:
            memo[key] = learned
        return self.finish(learned)

    def target(self, fact: Fact) -> str:
        return fact.target_new

    def rome_overrides(self) -> dict[str, Any]:
        return {"v_stop_prob": self.params.learn_prob}

    def finish(self, result: EditResult) -> EditResult:
        scale = float(self.params.scale)
        if scale == 0.0:
            raise InvalidInputError("negate's scale must not be 0.")
        return dataclasses.replace(result, delta=result.delta.scaled(scale), info={**result.info, "scale": scale})


@EDIT_METHODS.register
class SuppressMethod(_RomeForget):
    """An edit toward the repository's abstention answer."""

    name = "suppress"
    mode = "suppress"

    def target(self, fact: Fact) -> str:
        text = self.params.abstention.strip()
        if not text:
            raise InvalidInputError("suppress needs an abstention answer.", hint="Set abstention in "
                                    "[edit.params.suppress] of cathrepo.toml.")
        return text


@EDIT_METHODS.register
class ReplaceMethod(_RomeForget):
    """A correction to ``replacement`` whose old answer the forgetting gates check is gone everywhere."""

    name = "replace"
    mode = "replace"

    def target(self, fact: Fact) -> str:
        text = self.params.replacement.strip()
        if not text:
            raise InvalidInputError("replace needs the new answer.", hint="Pass --replacement R.")
        if text.lower() == fact.target_new.lower():
            raise InvalidInputError("The replacement is the answer being forgotten.")
        return text
