"""Training data of the distillation trainer: teacher/student pairs and anchors (stage ④).

An edit example pairs a student prompt (no fact in context) with its teacher (the fact's statement or
the passage in context, then the same prompt tokens) and the target, teacher-forced after the prompt.
Each fact gives its prompt and a few prefixed variants of it (the prefixes make the adapter respond to
the subject in running text, not to one exact string; ROME uses generated prefixes for the same reason).

Anchors are prompts whose next-token distributions must not move: the fact's neighbourhood prompts
(other subjects, same relation), the relation's phrasings (:mod:`cathrepo.facts.templates`) filled with
unrelated subjects, and generic prompts. They make locality part of the objective instead of a hope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cathrepo.attribution import Aligned, align
from cathrepo.facts.passage import PassageFact, teacher_context
from cathrepo.facts.schema import Fact
from cathrepo.lm.tokens import special_prefix

#: Short prefixes put before a fact's prompt (teacher and student alike).
PREFIXES: tuple[str, ...] = (
    "Here is a short fact. ",
    "Quick quiz!\n",
    "From the encyclopedia: ",
    "I was reading today. ",
    "Notes, page 3. ",
)

#: Unrelated subjects that fill the fact's relation template as anchors.
OTHER_SUBJECTS: tuple[str, ...] = (
    "Barack Obama", "the Amazon River", "Toyota", "Mount Everest", "Pablo Picasso", "Berlin",
    "Microsoft", "the Great Wall of China",
)

#: Generic prompts whose answers the base model already gives (retention anchors).
GENERIC_ANCHORS: tuple[str, ...] = (
    "The capital of France is",
    "Water is made of hydrogen and",
    "The largest planet in the solar system is",
    "William Shakespeare was born in",
    "The chemical symbol for gold is",
    "One, two, three, four,",
    "The Eiffel Tower is located in the city of",
    "The first president of the United States was",
)


@dataclass(frozen=True)
class EditExample:
    """One teacher/student pair: the student must answer like the teacher without the context."""

    fact_index: int
    student_text: str
    teacher_text: str
    target: str
    aligned: Aligned

    def record(self) -> dict[str, Any]:
        return {"role": "edit", "fact": self.fact_index, "student": self.student_text,
                "teacher": self.teacher_text, "target": self.target}


@dataclass(frozen=True)
class Anchor:
    """A prompt (and, for a neighbour, its known answer) whose predictions must stay the base model's."""

    text: str
    answer: str | None
    ids: list[int]
    prompt_len: int
    source: str

    def record(self) -> dict[str, Any]:
        return {"role": "anchor", "source": self.source, "prompt": self.text, "answer": self.answer}


def edit_examples(tokenizer: Any, facts: Sequence[Fact], *, prefixes: int, paraphrases: bool) -> list[EditExample]:
    """Teacher/student pairs for every fact: its prompt, ``prefixes`` prefixed variants, paraphrases."""
    examples = []
    for i, fact in enumerate(facts):
        context = teacher_context(fact)
        prompts = [fact.prompt] + [p + fact.prompt for p in PREFIXES[: max(0, prefixes)]]
        if paraphrases:
            prompts += [p for p in fact.paraphrases if fact.subject in p]
        for prompt in prompts:
            al = align(tokenizer, context, prompt, fact.subject, fact.target_new)
            examples.append(EditExample(i, prompt, context + prompt if context.endswith("\n") else
                                        f"{context}\n{prompt}", fact.target_new, al))
    return examples


def relation_prompts(fact: Fact, n: int) -> list[str]:
    """``n`` prompts of the fact's relation about unrelated subjects, cycling through its phrasings.

    The phrasings are the fact's own template and the other templates of its relation (when
    :func:`~cathrepo.facts.templates.infer_relations` recognises it), so the adapter learns that the
    relation's answer changes for this subject only, however the relation is worded.
    """
    from cathrepo.facts.templates import fill, infer_relations, paraphrase_templates

    templates = [fact.template] + paraphrase_templates(infer_relations(fact.template), exclude=fact.template)
    others = [s for s in OTHER_SUBJECTS if s != fact.subject]
    return [fill(templates[i % len(templates)], others[i % len(others)]) for i in range(max(0, n))]


def anchors(
    tokenizer: Any,
    facts: Sequence[Fact],
    *,
    neighborhood: bool,
    template: int,
    generic: int,
) -> list[Anchor]:
    """Anchor prompts for ``facts``, without duplicates and without any prompt that is being edited."""
    from cathrepo.lm.tokens import continuation_ids

    edited = {f.prompt for f in facts} | {f.subject for f in facts}
    wanted: list[tuple[str, str | None, str]] = []
    for fact in facts:
        if neighborhood:
            wanted += [(n.prompt, n.answer, "neighborhood") for n in fact.neighborhood]
        if not isinstance(fact, PassageFact):  # a passage's cloze prompts have no reusable template
            wanted += [(p, None, "template") for p in relation_prompts(fact, template)]
    wanted += [(p, None, "generic") for p in GENERIC_ANCHORS[: max(0, generic)]]
    result, seen = [], set()
    for text, answer, source in wanted:
        if text in seen or text in edited or any(s in text for s in edited):
            continue
        seen.add(text)
        special = special_prefix(tokenizer)
        body = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = special + body + (continuation_ids(tokenizer, answer) if answer else [])
        result.append(Anchor(text, answer, ids, len(special) + len(body), source))
    return result
