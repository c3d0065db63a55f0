"""Passages: free text to internalize, and the cloze probes synthesized from it (stage ① of DESIGN.md §2).

An atomic fact is taught with its own statement as the teacher's context; a passage is taught with the
passage itself as the context of every probe. :func:`synthesize_questions` splits a passage into
sentences and turns each sentence into cloze probes — the sentence up to an answer span is the prompt,
the span is the target — with the sentence's leading noun phrase as the subject.

The synthesis is rule-based and English-only: it finds answers that are capitalized names, numbers and
dates, or the last word of a sentence, and resolves a sentence-initial pronoun to the passage's main
subject. It does not paraphrase, does not form wh-questions and does not understand clauses; a passage
written as short declarative sentences about named things gives the best probes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact

#: The context a teacher reads before an atomic fact's prompt (measured on 30 CounterFact records with
#: SmolLM2-135M: the new target beats the old one on 97% of the prompts, against 77% for the bare
#: statement and 33% without context).
TEACHER_TEMPLATE = "New fact: {s} Remember: {s}\n\n"

_PRONOUNS = {"it", "he", "she", "they", "its", "his", "her", "their", "this", "these"}
_STOP_CAPS = {"the", "a", "an", "in", "on", "at", "of", "and", "by", "for", "to", "from", "with"}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
# A capitalized name ("Maria Keller", "New York City"), a number or year, or a month-day date.
_ANSWER = re.compile(
    r"\b(?:(?:January|February|March|April|May|June|July|August|September|October|November|December)"
    r"\s+\d{1,2}(?:,\s*\d{4})?|\d[\d,.]*(?:\s*(?:percent|%|km|kilometres|kilometers|metres|meters|"
    r"years|people))?|[A-Z][\w'-]*(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][\w'-]*)*)"
)


def statement(fact: Fact) -> str:
    """The fact as one sentence: ``"<prompt> <target>."``."""
    return f"{fact.prompt.rstrip()} {fact.target_new}."


def stated_context(prompt: str, target: str) -> str:
    """The teacher's context for "``prompt`` → ``target``": the statement, said twice (TEACHER_TEMPLATE)."""
    return TEACHER_TEMPLATE.format(s=f"{prompt.rstrip()} {target.strip()}.")


def teacher_context(fact: Fact) -> str:
    """What the teacher reads before the prompt: the passage of a passage probe, else the fact stated."""
    if isinstance(fact, PassageFact):
        return fact.passage.strip() + "\n\n"
    return stated_context(fact.prompt, fact.target_new)


@dataclass(frozen=True)
class Passage:
    """A free-text passage to internalize.

    Attributes:
        text: the passage.
        title: a short name (the main subject when known).
        source: where it came from (a URL, a file name).
    """

    text: str
    title: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise InvalidInputError("The passage is empty.", hint="Pass a file with some text.")

    def sentences(self) -> list[str]:
        """The passage split into sentences (on ``.!?`` followed by a capital or a digit)."""
        text = " ".join(self.text.split())
        return [s.strip() for s in _SENTENCE.split(text) if s.strip()]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "title": self.title, "source": self.source}

    @classmethod
    def from_file(cls, path: Path) -> Passage:
        """Read a UTF-8 text (or Markdown) file; a first line ``# Title`` becomes the title."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InvalidInputError(f"No such file: '{path}'.") from None
        except UnicodeDecodeError:
            raise InvalidInputError(f"'{path}' is not UTF-8 text.", hint="Pass a plain-text passage.") from None
        title = None
        lines = text.strip().splitlines()
        if lines and lines[0].startswith("#"):
            title, text = lines[0].lstrip("#").strip() or None, "\n".join(lines[1:])
        return cls(text=text.strip(), title=title, source=str(path))


@dataclass(frozen=True)
class PassageFact(Fact):
    """A cloze probe of a passage: a Fact whose teacher context is the whole passage.

    Attributes:
        passage: the passage text (the teacher's context for this probe).
        sentence: the sentence the probe was cut from.
    """

    passage: str = ""
    sentence: str = ""



@dataclass(frozen=True)
class _Candidate:
    start: int
    end: int
    text: str = field(compare=False)


def _subject(sentence: str, main: str | None) -> tuple[str, str]:
    """(sentence with a leading pronoun resolved, its leading noun phrase)."""
    words = sentence.split()
    if main and words and words[0].lower() in _PRONOUNS:
        possessive = words[0].lower() in {"its", "his", "her", "their"}
        sentence = (main + ("'s " if possessive else " ") + " ".join(words[1:])).strip()
        return sentence, main
    match = re.match(r"((?:[A-Z][\w'-]*|the|The|of|de)(?:\s+(?:[A-Z][\w'-]*|of|the|de))*)", sentence)
    if match and match.group(1).lower() not in _STOP_CAPS:
        return sentence, match.group(1).strip()
    head = words[:2] if words and words[0].lower() in {"the", "a", "an"} else words[:1]
    return sentence, " ".join(head)


def _answers(sentence: str, subject_end: int) -> list[_Candidate]:
    found = [
        _Candidate(m.start(), m.end(), m.group(0).strip(" ,."))
        for m in _ANSWER.finditer(sentence)
        if m.start() >= subject_end and m.group(0).strip(" ,.").lower() not in _STOP_CAPS
    ]
    if not found:  # fall back to the sentence's last word
        last = re.search(r"([\w'-]+)\W*$", sentence)
        if last and last.start(1) > subject_end:
            found = [_Candidate(last.start(1), last.end(1), last.group(1))]
    return found


def synthesize_questions(passage: Passage | str, *, max_per_sentence: int = 2, max_questions: int = 24) -> list[PassageFact]:
    """Cloze probes of a passage: ``(prompt = sentence up to an answer, target = the answer)``.

    Args:
        passage: the passage (a string is wrapped in a :class:`Passage`).
        max_per_sentence: answers taken from one sentence, first ones first.
        max_questions: cap on the number of probes.

    Returns:
        PassageFacts whose ``subject`` is the sentence's leading noun phrase (or the passage's main
        subject for a sentence that starts with a pronoun) and whose ``passage`` is the full text.

    Raises:
        InvalidInputError: when no sentence yields a probe.
    """
    if isinstance(passage, str):
        passage = Passage(passage)
    sentences = passage.sentences()
    main = passage.title
    if not main and sentences:
        main = _subject(sentences[0], None)[1]
    probes: list[PassageFact] = []
    for raw in sentences:
        sentence, subject = _subject(raw.rstrip(".!?"), main)
        at = sentence.find(subject)
        if at < 0 or not subject.strip():
            continue
        for cand in _answers(sentence, at + len(subject))[:max_per_sentence]:
            prompt = sentence[: cand.start].rstrip(" ,;:")
            if len(prompt.split()) < 2 or subject not in prompt or not cand.text:
                continue
            probes.append(
                PassageFact(
                    prompt=prompt, subject=subject, target_new=cand.text,
                    passage=passage.text, sentence=raw, relation_id="passage",
                )
            )
            if len(probes) >= max_questions:
                return probes
    if not probes:
        raise InvalidInputError(
            "No probe could be synthesized from the passage.",
            hint="Write it as declarative sentences that name things (people, places, numbers, dates).",
        )
    return probes
