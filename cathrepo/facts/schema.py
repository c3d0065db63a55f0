"""Facts: what a user asks the model to learn, correct or forget (stage ① of DESIGN.md §2).

A :class:`Fact` is a (subject, relation prompt, new target, old target) tuple plus whatever evaluation
prompts the source record carried. :func:`parse_records` accepts the formats users already have:
CounterFact's flat EasyEdit layout, ROME's nested ``requested_rewrite`` layout, zsRE (MEND split) and
the plain ``{prompt, subject, target_new, target_true}`` object.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cathrepo.exceptions import InvalidInputError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Neighbor:
    """A prompt about another subject whose answer must not change."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class Fact:
    """One atomic fact to write into (or, with ``action="forget"``, remove from) the model.

    Attributes:
        prompt: the rewrite prompt; contains ``subject`` verbatim ("The mother tongue of X is").
        subject: the entity the fact is about.
        target_new: the answer the model should give after the edit (no leading space).
        target_true: the answer it gave before, when known; the gates compare new against it.
        paraphrases: other prompts with the same meaning, from the source record.
        neighborhood: other subjects' prompts with their expected answers, from the source record.
        generation_prompts: prompts for free generation, from the source record.
        relation_id: Wikidata relation ("P103") when known.
        case_id: the record id in its data set, when known.
        action: "edit" or "forget" (what the commit does with the fact; the word of its
            ``Cathrepo-Action`` trailer).
        inverse_prompts: for a forget, prompts that read the relation backwards and whose answer is the
            subject ("Paris is home to the" when the Eiffel Tower forgets Paris): the subject must leave
            their top k too, so the fact does not leak through the inverse relation (an edit ignores them).
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()
    neighborhood: tuple[Neighbor, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    relation_id: str | None = None
    case_id: int | None = None
    action: str = "edit"
    inverse_prompts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("prompt", "subject", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(f"The fact's '{name}' is empty.", hint=f"Give a non-empty {name}.")
        if self.subject not in self.prompt:
            raise InvalidInputError(
                f"The subject '{self.subject}' does not occur in the prompt '{self.prompt}'.",
                hint="The prompt must contain the subject verbatim, e.g. --prompt 'X is located in'.",
            )
        if self.action not in ("edit", "forget"):
            raise InvalidInputError(f"Unknown fact action '{self.action}'.", hint="Use 'edit' or 'forget'.")
        if isinstance(self.inverse_prompts, str) or any(not isinstance(q, str) or not q.strip()
                                                         for q in self.inverse_prompts):
            raise InvalidInputError("The fact's inverse prompts must be a list of non-empty prompts.",
                                    hint='e.g. "inverse_prompts": ["Paris is home to the"]')
        object.__setattr__(self, "inverse_prompts", tuple(self.inverse_prompts))
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip() or None)

    @property
    def template(self) -> str:
        """The prompt with the subject replaced by ``{}`` (ROME's relation template)."""
        return self.prompt.replace(self.subject, "{}", 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["neighborhood"] = [asdict(n) for n in self.neighborhood]
        data["paraphrases"] = list(self.paraphrases)
        data["generation_prompts"] = list(self.generation_prompts)
        if self.inverse_prompts:
            data["inverse_prompts"] = list(self.inverse_prompts)
        else:  # a fact without them keeps the record bytes it always had
            del data["inverse_prompts"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fact:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "kind" in data and "action" not in data:  # written before schema 2
            kwargs["action"] = data["kind"]
        kwargs["paraphrases"] = tuple(kwargs.get("paraphrases") or ())
        kwargs["generation_prompts"] = tuple(kwargs.get("generation_prompts") or ())
        kwargs["inverse_prompts"] = tuple(kwargs.get("inverse_prompts") or ())
        kwargs["neighborhood"] = tuple(
            n if isinstance(n, Neighbor) else Neighbor(**n) for n in kwargs.get("neighborhood") or ()
        )
        return cls(**kwargs)


@dataclass(frozen=True)
class EditRequest:
    """What one edit writes, plus where it came from and how much it matters (DESIGN.md §3).

    Attributes:
        fact: the fact (for a passage: its first cloze probe).
        more: further facts written by the same edit (a passage's other probes).
        passage: the passage these facts were synthesized from ({text, title, source}), if any.
        topics: what the fact is about ("medical", "legal"): ``[risk]`` in ``cathrepo.toml`` maps a topic
            to the lowest risk tier its edits have.
    """

    fact: Fact
    source: str | None = None
    author: str | None = None
    confidence: float = 1.0
    risk: str = "low"
    extra: Mapping[str, Any] = field(default_factory=dict)
    more: tuple[Fact, ...] = ()
    passage: Mapping[str, Any] | None = None
    topics: tuple[str, ...] = ()

    @property
    def facts(self) -> tuple[Fact, ...]:
        return (self.fact, *self.more)

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.confidence) <= 1.0:
            raise InvalidInputError(
                f"Confidence {self.confidence} is outside [0, 1].", hint="Pass --confidence between 0 and 1."
            )
        if self.risk not in ("low", "medium", "high"):
            raise InvalidInputError(f"Unknown risk tier '{self.risk}'.", hint="Use low, medium or high.")
        topics = tuple(sorted({str(t).strip().lower() for t in self.topics}))
        if any(not t or any(c.isspace() or c == "," for c in t) for t in topics):
            raise InvalidInputError(f"Topics {list(self.topics)} must be single words.",
                                    hint="Pass --topic medical (repeat --topic for more).")
        object.__setattr__(self, "topics", topics)


# --- parsing the formats users already have ---------------------------------------------------------


def _require(record: Mapping[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise InvalidInputError(f"Record is missing {', '.join(repr(k) for k in missing)}: {_short(record)}")


def _short(record: Any) -> str:
    text = json.dumps(record, ensure_ascii=False)
    return text if len(text) < 160 else text[:157] + "..."


def _str(value: Any) -> str:
    return value["str"] if isinstance(value, Mapping) else str(value)


def fact_from_record(record: Mapping[str, Any]) -> Fact:
    """Parse one record in any supported format into a Fact."""
    if not isinstance(record, Mapping):
        raise InvalidInputError(f"Expected a JSON object per fact, got {type(record).__name__}: {_short(record)}")
    if "requested_rewrite" in record:  # ROME's nested CounterFact
        rw = record["requested_rewrite"]
        _require(rw, "prompt", "subject", "target_new")
        prompt = rw["prompt"].format(rw["subject"]) if "{}" in rw["prompt"] else rw["prompt"]
        return Fact(
            prompt=prompt,
            subject=rw["subject"],
            target_new=_str(rw["target_new"]),
            target_true=_str(rw["target_true"]) if rw.get("target_true") else None,
            paraphrases=tuple(record.get("paraphrase_prompts") or ()),
            neighborhood=tuple(
                Neighbor(p, _str(rw["target_true"])) for p in record.get("neighborhood_prompts") or ()
            )
            if rw.get("target_true")
            else (),
            generation_prompts=tuple(record.get("generation_prompts") or ()),
            relation_id=rw.get("relation_id"),
            case_id=record.get("case_id"),
        )
    if "src" in record and "alt" in record:  # zsRE (MEND split)
        _require(record, "subject")
        answers = record.get("answers") or ([record["pred"]] if record.get("pred") else [])
        loc = record.get("loc")
        return Fact(
            prompt=record["src"],
            subject=record["subject"],
            target_new=record["alt"],
            target_true=answers[0] if answers else None,
            paraphrases=(record["rephrase"],) if record.get("rephrase") else (),
            neighborhood=(Neighbor(loc.removeprefix("nq question: "), record["loc_ans"]),)
            if loc and record.get("loc_ans")
            else (),
        )
    _require(record, "prompt", "subject", "target_new")
    prompt = record["prompt"]
    if "{}" in prompt:
        prompt = prompt.format(record["subject"])
    target_true = record.get("target_true", record.get("ground_truth"))
    neighborhood: list[Neighbor] = []
    if record.get("locality_prompt") and record.get("locality_ground_truth"):
        neighborhood.append(Neighbor(record["locality_prompt"], _str(record["locality_ground_truth"])))
    for n in record.get("neighborhood") or ():
        neighborhood.append(n if isinstance(n, Neighbor) else Neighbor(n["prompt"], n["answer"]))
    paraphrases = list(record.get("paraphrases") or ())
    if record.get("rephrase_prompt"):
        paraphrases.insert(0, record["rephrase_prompt"])
    return Fact(
        prompt=prompt,
        subject=record["subject"],
        target_new=_str(record["target_new"]),
        target_true=_str(target_true) if target_true else None,
        paraphrases=tuple(paraphrases),
        neighborhood=tuple(neighborhood),
        generation_prompts=tuple(record.get("generation_prompts") or ()),
        relation_id=record.get("relation_id"),
        case_id=record.get("case_id"),
        action=record.get("action") or record.get("kind", "edit"),  # "kind" before schema 2
        inverse_prompts=tuple(record.get("inverse_prompts") or ()),
    )


def parse_records(records: Iterable[Mapping[str, Any]]) -> list[Fact]:
    """Parse records, naming the index of the first bad one."""
    facts = []
    for i, record in enumerate(records):
        try:
            facts.append(fact_from_record(record))
        except InvalidInputError as exc:
            raise InvalidInputError(f"Record {i}: {exc.message}", hint=exc.hint) from None
    return facts


def load_records(path: Path) -> list[dict[str, Any]]:
    """Read a JSON array, a single JSON object or JSONL file of records."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"No such file: '{path}'.") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"'{path}' is not UTF-8 text.", hint="Pass a JSON or JSONL file.") from None
    stripped = text.lstrip()
    if not stripped:
        raise InvalidInputError(f"'{path}' is empty.", hint="Pass a JSON array or JSONL of facts.")
    if stripped[0] == "[" or (stripped[0] == "{" and "\n{" not in stripped.strip()):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"'{path}' is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
            ) from None
        return list(data) if isinstance(data, list) else [data]
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"'{path}' line {lineno} is not valid JSON: {exc.msg}.") from None
    return records


def load_facts(path: Path, limit: int | None = None) -> list[Fact]:
    """Load and parse a facts file (any supported format)."""
    records = load_records(path)
    return parse_records(records[:limit] if limit else records)
