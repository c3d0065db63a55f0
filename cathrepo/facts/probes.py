"""Probes: the tests an edit is committed with (stage ② of DESIGN.md §2).

For each fact :func:`build_probes` synthesizes the prompts the gates score, following CounterFact's
evaluation (Meng et al. 2022): the rewrite prompt; paraphrases (the record's own and the relation's other
templates); neighbourhood prompts (other subjects of the same relation whose answer the base model already
gives, mined from known facts, plus the record's own); generation prompts; attribute prompts (other subjects
that truly have the new object); and, for a forget request, the prompts whose answer must go.

A :class:`ProbeSet` is written as ``edits/<id>/probes.jsonl``: a header line, then one probe per line.

Each probe has a ``target`` (the answer it expects) and, for the teacher-forced kinds, an ``other`` (the
answer it must beat): the old object for rewrite and paraphrase prompts, the edit's new object for a
neighbour. A probe with no ``other`` passes when the target's first token is the model's top prediction; a
forget probe passes when it is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import Fact
from cathrepo.facts.templates import fill, infer_relations, normalize, split_templates

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: the header's "fact_kind" is named "action"
KINDS = ("rewrite", "paraphrase", "neighborhood", "generation", "attribute", "forget")
SOURCES = ("record", "template", "mined", "inverse")
#: Kinds scored teacher-forced (one forward pass each); generation probes are decoded instead.
SCORED_KINDS = ("rewrite", "paraphrase", "neighborhood", "attribute", "forget")
#: The kinds whose failure means the edit itself no longer holds.
HARD_KINDS = ("rewrite", "forget")


def stated(prompt: str, target: str) -> str:
    """A fact stated as a sentence, to put before another prompt: CounterFact+'s neighbourhood prefix
    ("The mother tongue of X is French. ") and ROME's protected contexts use the same one."""
    return f"{prompt} {target}. "


@dataclass(frozen=True)
class Probe:
    """One prompt and the answer a gate expects after it.

    Attributes:
        kind: rewrite, paraphrase, neighborhood, generation, attribute or forget.
        prompt: the text the model continues.
        target: the expected answer (for forget: the answer that must go).
        other: the answer ``target`` must beat, when there is one.
        source: record (from the fact's data), template (relation templates), mined (known facts) or
            inverse (a forget's prompt read backwards, whose target is the subject).
    """

    kind: str
    prompt: str
    target: str
    other: str | None = None
    source: str = "record"

    def after(self, prefix: str) -> Probe:
        """The same probe with ``prefix`` put before its prompt."""
        return Probe(self.kind, prefix + self.prompt, self.target, self.other, self.source)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"Unknown probe kind '{self.kind}'.", hint=f"Kinds: {', '.join(KINDS)}.")
        if self.source not in SOURCES:
            raise InvalidInputError(f"Unknown probe source '{self.source}'.", hint=f"Use {', '.join(SOURCES)}.")
        if not self.prompt.strip() or not self.target.strip():
            raise InvalidInputError(f"A {self.kind} probe needs a prompt and a target: {self!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Probe:
        return cls(
            kind=data["kind"], prompt=data["prompt"], target=data["target"],
            other=data.get("other"), source=data.get("source", "record"),
        )


@dataclass(frozen=True)
class ProbeSet:
    """The probes of one edit, plus what they are about (the header of ``probes.jsonl``)."""

    probes: tuple[Probe, ...]
    subject: str = ""
    relation_id: str | None = None
    action: str = "edit"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.probes)

    def __iter__(self) -> Any:
        return iter(self.probes)

    def of_kind(self, *kinds: str) -> list[Probe]:
        return [p for p in self.probes if p.kind in kinds]

    def header(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "type": "cathrepo.probes", "subject": self.subject,
                "relation_id": self.relation_id, "action": self.action, "meta": dict(self.meta)}

    def to_jsonl(self) -> str:
        lines = [self.header(), *(p.to_dict() for p in self.probes)]
        return "".join(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n" for line in lines)

    @classmethod
    def from_jsonl(cls, text: str) -> ProbeSet:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        header: dict[str, Any] = {}
        if rows and rows[0].get("type") == "cathrepo.probes":
            header = rows.pop(0)
            if int(header.get("schema_version", 1)) > SCHEMA_VERSION:
                raise InvalidInputError(
                    f"probes.jsonl has schema_version {header['schema_version']}; this cathrepo reads "
                    f"{SCHEMA_VERSION}.", hint="Upgrade cathrepo.")
        return cls(
            probes=tuple(Probe.from_dict(r) for r in rows),
            subject=header.get("subject", ""),
            relation_id=header.get("relation_id"),
            action=header.get("action") or header.get("fact_kind", "edit"),  # "fact_kind" before schema 2
            meta=header.get("meta") or {},
        )

# --- known facts: the pool neighbours, attribute prompts and retention checks are drawn from ----------


@dataclass(frozen=True)
class KnownFact:
    """A fact a model is expected to know (ROME's known_1000 layout)."""

    subject: str
    prompt: str
    answer: str
    relation_id: str | None = None


def default_known_facts_path() -> Path:
    """The copy of known_1000 shipped in ``cathrepo/data/known/`` (MIT, ROME; see its README)."""
    return Path(str(resources.files("cathrepo") / "data" / "known" / "known_1000.json"))


#: Halves of a known-facts file, split by a hash of the subject: the gates measure one half (retention,
#: mined neighbours) and edit methods protect the other (their keys are preserved), so no gate measures
#: a fact an editor was told to leave alone. A subject's facts all fall in one half.
KNOWN_PARTS = ("all", "measure", "protect")


def known_part(subject: str) -> str:
    """The half of the known facts ``subject`` belongs to: ``measure`` or ``protect``."""
    return "protect" if hashlib.sha256(subject.strip().encode()).digest()[0] & 1 else "measure"


def load_known_facts(path: Path | None = None, part: str = "all") -> list[KnownFact]:
    """Read known facts (``subject``, ``prompt``, ``attribute``, ``relation_id`` per record).

    Args:
        path: a known_1000-format file (default: the shipped copy).
        part: ``all``, or one half of the file (see :data:`KNOWN_PARTS`).
    """
    if part not in KNOWN_PARTS:
        raise ValueError(f"unknown part {part!r}")
    path = path or default_known_facts_path()
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"No known-facts file '{path}'.") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"'{path}' is not valid JSON: {exc.msg}.") from None
    facts = []
    for r in records:
        answer = r.get("attribute") or r.get("answer") or r.get("target_true")
        if not (r.get("subject") and r.get("prompt") and answer):
            continue
        facts.append(KnownFact(r["subject"], r["prompt"], str(answer).strip(), r.get("relation_id")))
    return facts if part == "all" else [f for f in facts if known_part(f.subject) == part]


# --- building ---------------------------------------------------------------------------------------


def build_probes(
    fact: Fact,
    model: Any = None,
    tokenizer: Any = None,
    known_facts: Sequence[KnownFact] | None = None,
    *,
    n_paraphrases: int = 3,
    n_neighbors: int = 3,
    n_attribute: int = 1,
    n_generation: int = 2,
    check_known: bool = True,
) -> ProbeSet:
    """Synthesize an edit's probes.

    Args:
        fact: the fact to write (or, with ``action="forget"``, to remove: its ``target_new`` names the
            answer that must go).
        model, tokenizer: the model as it is before the edit; when given, mined neighbours and attribute
            prompts are kept only if the model already gives their answer, and a missing ``target_true``
            is filled with the model's own answer.
        known_facts: the pool to mine neighbours from (default: the measured half of the shipped
            known_1000 copy).
        n_paraphrases: template paraphrases added to the record's own.
        n_neighbors: mined neighbours added to the record's own.
        n_attribute: mined attribute prompts (other subjects whose true answer is the new target).
        n_generation: template generation prompts when the record has none.
        check_known: check mined prompts with the model; pass False when ``known_facts`` has already been
            filtered with :func:`known_by_model` (one batched pass for many facts).
    """
    checking = model is not None and tokenizer is not None and check_known
    relations = (fact.relation_id,) if fact.relation_id else infer_relations(fact.template)
    templates, _ = split_templates(relations, exclude=fact.template)
    paraphrases = _unique([fact.prompt], fact.paraphrases)
    template_paraphrases = _unique([fact.prompt, *paraphrases], [fill(t, fact.subject) for t in templates])
    pool = list(known_facts) if known_facts is not None else load_known_facts(part="measure")
    same_relation = [k for k in pool if k.relation_id in relations and k.subject != fact.subject
                     and k.subject not in fact.prompt and fact.subject not in k.prompt]
    forget = fact.action == "forget"
    old = fact.target_true
    if model is not None and tokenizer is not None and old is None and not forget:
        old = model_answer(model, tokenizer, fact.prompt)
    probes: list[Probe] = []
    # 1. the prompts the edit is about
    kind, other = ("forget", None) if forget else ("rewrite", old)
    probes.append(Probe(kind, fact.prompt, fact.target_new, other, "record"))
    para_kind = "forget" if forget else "paraphrase"
    probes += [Probe(para_kind, p, fact.target_new, other, "record") for p in paraphrases]
    probes += [Probe(para_kind, p, fact.target_new, other, "template") for p in template_paraphrases[:n_paraphrases]]
    if forget:  # the relation read backwards: the subject must go there (no leak through the inverse)
        probes += [Probe("forget", q, fact.subject, None, "inverse") for q in fact.inverse_prompts]
    # 2. neighbours: the record's own, then mined ones the model already answers
    probes += [Probe("neighborhood", n.prompt, n.answer, fact.target_new, "record") for n in fact.neighborhood
               if not _same(n.answer, fact.target_new)]
    candidates = [k for k in _ranked(same_relation, fact, prefer=old) if not _same(k.answer, fact.target_new)]
    for k in _known_by_model(candidates, model, tokenizer, n_neighbors) if checking else candidates[:n_neighbors]:
        probes.append(Probe("neighborhood", k.prompt, k.answer, fact.target_new, "mined"))
    # 3. attribute prompts: other subjects whose true answer is the new target
    if not forget and n_attribute:
        holders = [k for k in _ranked(same_relation, fact) if _same(k.answer, fact.target_new)]
        chosen = _known_by_model(holders, model, tokenizer, n_attribute) if checking else holders[:n_attribute]
        probes += [Probe("attribute", k.prompt, k.answer, old, "mined") for k in chosen]
    # 4. generation prompts (decoded for free-generation success and fluency)
    if fact.generation_prompts:
        probes += [Probe("generation", g, fact.target_new, None, "record") for g in fact.generation_prompts]
    else:
        probes += [Probe("generation", p.prompt, fact.target_new, None, p.source) for p in probes[1 : 1 + n_generation]
                   if p.kind in ("paraphrase", "forget") and p.source != "inverse"]
    return ProbeSet(tuple(probes), fact.subject, relations[0] if relations else None,
                    fact.action, {"case_id": fact.case_id} if fact.case_id is not None else {})


def _unique(seen: Iterable[str], items: Iterable[str]) -> list[str]:
    known = {normalize(s) for s in seen}
    out = []
    for item in items:
        if normalize(item) not in known:
            known.add(normalize(item))
            out.append(item)
    return out


def _same(a: str, b: str | None) -> bool:
    return b is not None and a.strip().lower() == b.strip().lower()


def _ranked(pool: Sequence[KnownFact], fact: Fact, prefer: str | None = None) -> list[KnownFact]:
    """Candidates in a stable per-fact order: those sharing ``prefer`` (ROME's neighbours share the old
    object) first, the rest shuffled by a hash of the two subjects so facts draw different neighbours."""

    def key(k: KnownFact) -> tuple[int, str]:
        h = hashlib.sha256(f"{fact.subject}\0{k.subject}".encode()).hexdigest()
        return (0 if _same(k.answer, prefer) else 1, h)

    seen: set[str] = set()
    out = []
    for k in sorted(pool, key=key):
        if k.subject not in seen:
            seen.add(k.subject)
            out.append(k)
    return out


def known_by_model(model: Any, tokenizer: Any, facts: Sequence[KnownFact], *, batch_size: int = 64) -> list[KnownFact]:
    """The facts whose answer's first token is the model's top prediction after the prompt."""
    from cathrepo.lm.scoring import score_continuations
    from cathrepo.lm.tokens import first_token_id

    scores = score_continuations(model, tokenizer, [k.prompt for k in facts], [[] for _ in facts],
                                 batch_size=batch_size)
    return [k for k, s in zip(facts, scores, strict=True) if s.top1 == first_token_id(tokenizer, k.answer)]


def _known_by_model(candidates: Sequence[KnownFact], model: Any, tokenizer: Any, n: int,
                    chunk: int = 16) -> list[KnownFact]:
    """The first ``n`` candidates whose answer's first token is the model's top prediction."""
    kept: list[KnownFact] = []
    for start in range(0, len(candidates), chunk):
        kept += known_by_model(model, tokenizer, candidates[start : start + chunk])
        if len(kept) >= n:
            break
    return kept[:n]


def model_answer(model: Any, tokenizer: Any, prompt: str) -> str | None:
    """The model's own short answer to ``prompt`` (its greedy continuation up to punctuation)."""
    import re

    from cathrepo.lm.decoding import greedy_continuations

    text = greedy_continuations(model, tokenizer, [prompt], max_new_tokens=6)[0]
    answer = re.split(r"[.,;:!?\n]| and | who | which ", text)[0].strip()
    return " ".join(answer.split()[:3]) or None
