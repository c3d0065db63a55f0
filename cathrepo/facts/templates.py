"""Relation templates: how a Wikidata relation is phrased as a prompt (stage ② of DESIGN.md §2).

Probes need other phrasings of an edit's relation (paraphrases) and other subjects of the same relation
(neighbours). Both start from the relation: CounterFact's relations are Wikidata properties (P103 "native
language", P17 "country", ...), each phrased by several cloze templates with ``{}`` for the subject, in
the style of ParaRel (Elazar et al. 2021), which CounterFact's prompts come from.

When a record carries no ``relation_id`` (EasyEdit's flat CounterFact, user facts), the relation is inferred
from the prompt's template. Some templates fit several relations ("{} is located in" is a country, a
continent, a region or a place); :func:`infer_relations` then returns every candidate and
:func:`paraphrase_templates` keeps only the phrasings that are valid for all of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Relation:
    """One Wikidata relation and its cloze templates (``{}`` is the subject; the object follows)."""

    id: str
    label: str
    templates: tuple[str, ...]


_LOCATED = ("{} is located in", "{} is in", "{}, in", "{} can be found in")
_BORN = ("{} is originally from", "{} was originally from")
#: More phrasings of the location relations, after the ones the probes take (editors train on these).
_LOCATED_MORE = ("{} is situated in", "{}, situated in", "{} lies in", "{} is found in")
_MADE = ("{} is made by", "{}, made by", "{} was made by", "{}, which is made by", "{} is a creation of")
_WORK_LANGUAGE = ("{} is in the language of", "{} was originally in", "{}, originally in")

RELATIONS: dict[str, Relation] = {
    r.id: r
    for r in (
        Relation("P17", "country", (
            "{} is located in the country of", "{}, located in", "{}, which is located in", *_LOCATED,
            *_LOCATED_MORE,
        )),
        Relation("P30", "continent", (
            "{} belongs to the continent of", "{} is located in the continent", "{} is a part of the continent of",
            *_LOCATED,
            *_LOCATED_MORE,
        )),
        Relation("P131", "located in the administrative territory", (
            *_LOCATED, "{} is within", "{}, located in", "{}, which is located in",
            *_LOCATED_MORE,
        )),
        Relation("P276", "location", (
            "The location of {} is", *_LOCATED, "{} is within", "Where is {}? It is located in",
            *_LOCATED_MORE,
        )),
        Relation("P36", "capital", (
            "The capital of {} is", "The capital city of {} is", "{}'s capital city is", "{}'s capital is",
            "{}'s capital,", "{}'s capital city,", "{}, which has the capital city", "{}, which has the capital",
        )),
        Relation("P190", "twinned city", (
            "The twin city of {} is", "What is the twin city of {}? It is", "{} is a twin city of",
            "{}'s twin city is", "{} is twinned with", "The sister city of {} is", "{}'s sister city is",
        )),
        Relation("P103", "native language", (
            "The mother tongue of {} is", "The native language of {} is", "{} is a native speaker of",
            "{}, a native", "{}, speaker of",
            "{}'s first language is", "{} grew up speaking", "{}'s native tongue is",
        )),
        Relation("P1412", "language spoken or written", (
            "The language used by {} is", "{} speaks", "{} writes in", "{} speaks the language",
            "{} spoke the language",
            "{} is fluent in", "The language {} speaks is", "{} communicates in",
        )),
        Relation("P37", "official language", (
            "The official language of {} is", "In {}, the language spoken is", "In {}, an official language is",
            "In {}, they understand", "The law in {} declares the language",
            "The main language of {} is", "{}'s official language is", "The official languages of {} include",
        )),
        Relation("P364", "original language of the work", (
            "The original language of {} is", "The original language of {} was", "The language of {} is",
            "The language of {} was",
            *_WORK_LANGUAGE,
        )),
        Relation("P407", "language of the work", (
            "{} is written in", "{} was written in", "The language of {} is", "The language of {} was",
            *_WORK_LANGUAGE,
        )),
        Relation("P27", "country of citizenship", (
            "{} is a citizen of", "{}, a citizen of", "{}, who is a citizen of", "{} has a citizenship from",
            "{}, who has a citizenship from", "{} holds a citizenship from", "{}, who holds a citizenship from",
            "{}, who has a citizenship of", "{} has a citizenship of",
        )),
        Relation("P495", "country of origin", (
            "{} was created in the country of", "{} was created in", "{}, that was created in", "{}, created in",
            "{}, that originated in", "{}, that was from", "{} was from", "{} from", "{} was formulated in",
            "{}, formulated in", "{}, that was formulated in", "{} was developed in", "{}, developed in",
            "{}, that was developed in",
        )),
        Relation("P740", "location of formation", (
            "{} was founded in", "{}, founded in", "{} that was founded in", "{} formed in", "{} was formed in",
            "{}, that was formed in", "{} started in", "{} was started in", "{}, that was started in",
            "{} originated in",
        )),
        Relation("P19", "place of birth", (
            "{} was born in", "{} originates from", "{} originated from", "{} is native to", "{} was native to",
            *_BORN,
        )),
        Relation("P20", "place of death", (
            "{} died in the city of", "{} died in", "{} died at", "{} passed away in", "{} passed away at",
            "{} lost their life at", "{} expired at", "{}'s life ended in", "{} succumbed at",
        )),
        Relation("P937", "work location", (
            "{} worked in the city of", "{} worked in", "{} took up work in", "{} found employment in",
            "{} was employed in", "{} used to work in",
            "{} had a job in", "{} was working in", "{}'s workplace was in",
        )),
        Relation("P159", "headquarters location", (
            "The headquarter of {} is in", "The headquarters of {} is in", "The headquarter of {} is located in",
            "{}'s headquarters are in", "{}, whose headquarters are in", "{} is headquartered in",
            "{} is based in",
        )),
        Relation("P108", "employer", (
            "{} is employed by", "{}, who is employed by", "{} works for", "{}, who works for", "{}, of",
            "{}'s employer is", "{} is an employee of", "{} has worked for",
        )),
        Relation("P127", "owned by", (
            "{} is owned by", "{}'s owner", "{} owner", "{}, by", "{} is a property of", "{}, owned by", "{}, which is owned by",
        )),
        Relation("P176", "manufacturer", (
            "{} is produced by", "{}, produced by", "{}, a product manufactured by", "{} is created by",
            "{}, created by", "{} is a product of", "{}, a product of", "{} was a product of",
            *_MADE,
        )),
        Relation("P178", "developer", (
            "{} is developed by", "{}, developed by", "{} was developed by", "{}, a product developed by",
            "{} is created by", "{} was created by", "{}, a product created by",
            *_MADE,
        )),
        Relation("P138", "named after", (
            "{} is named after", "{} was named after", "{}, named after", "{}, which is named after",
            "{}, which was named after", "{} is named for", "{} was named for", "{}, named for",
            "{}, which is named for", "{}, which was named for", "{} is called after", "{} was called after",
            "{}, called after", "{}, which is called after", "{}, which was called after",
        )),
        Relation("P140", "religion", (
            "{} follows the religion of", "{} is affiliated with the religion", "{} is follower of",
            "The official religion of {} is",
            "The religion of {} is", "{}'s religion is", "{} is an adherent of",
        )),
        Relation("P39", "position held", (
            "{} holds the position of", "{}, who holds the position of", "{} has the position of",
            "{}, who has the position of", "{}, whose position is that of", "{}'s position is",
            "{} holds the title of", "{} is a",
        )),
        Relation("P106", "occupation", (
            "{} works as", "{}, who works as", "The occupation of {} is", "{}'s occupation is",
            "The profession of {} is", "{}'s profession is a", "{}'s profession is an",
        )),
        Relation("P101", "field of work", (
            "{} works in the field of", "{} works in the area of", "{}'s expertise is", "The expertise of {} is",
            "{}'s area of work is", "{}'s domain of work is", "{}'s domain of activity is",
            "The domain of activity of {} is", "The domain of work of {} is", "{} specializes in",
        )),
        Relation("P413", "position played", (
            "{} plays in the position of", "{} plays as", "{}, who plays the position",
            "Which position does {} play? They play as",
            "{}'s playing position is", "The position of {} is", "{} plays the position of", "{} is playing as",
        )),
        Relation("P641", "sport", (
            "{} professionally plays the sport", "{} is a professional", "What sport does {} play? They play",
            "The sport played by {} is", "{}'s sport is", "{} plays the sport of", "{} is a professional player of",
        )),
        Relation("P1303", "instrument", (
            "{} plays the instrument", "{} plays the", "{} performs on the", "{}, performing on the",
            "{}, playing the",
        )),
        Relation("P136", "genre", (
            "{} is known for performing", "The genre played by {} is", "{} performs", "{}, who plays",
            "What does {} play? They play",
            "{}'s genre is", "{} plays music in the genre of", "The music of {} is",
        )),
        Relation("P264", "record label", (
            "{}'s music label is", "{}'s label is", "{} is represented by music label", "{} is represented by",
            "{}, which is represented by", "The music label that is representing {} is", "{} recorded for",
            "{}, released by", "{} label :",
        )),
        Relation("P449", "original broadcaster", (
            "{} premieres on", "{} premiered on", "{} debuted on", "{} is to debut on",
            "{} was originally aired on", "{} was released on",
            "{} was first broadcast on", "{} first aired on", "{} airs on",
        )),
        Relation("P463", "member of", (
            "{} is a member of", "{} is affiliated with", "{} is affiliated with the", "{} is a part of the",
            "{} belongs to the organization of",
            "{} is one of the members of", "{} has membership in", "{} joined",
        )),
        Relation("P530", "diplomatic relation", (
            "{} maintains diplomatic relations with", "{} has diplomatic relations with",
            "{} established diplomatic relations with",
            "{} has diplomatic ties with", "{} keeps diplomatic relations with", "{} has established diplomatic ties with",
        )),
    )
}

#: Ambiguous phrasings that no single relation owns ("{}, the" is a position, an instrument or a sport).
AMBIGUOUS: dict[str, tuple[str, ...]] = {
    "{}, the": ("P413", "P1303", "P641"),
    "{} plays": ("P136", "P1303", "P641", "P413"),
    "{}, from": ("P495", "P127", "P27"),
    "{} is from": ("P495", "P127"),
}


def normalize(template: str) -> str:
    """Collapse whitespace and drop a trailing space, so lookups ignore formatting noise."""
    return " ".join(template.split())


@cache
def _index() -> dict[str, tuple[str, ...]]:
    index: dict[str, list[str]] = {}
    for rel in RELATIONS.values():
        for template in rel.templates:
            index.setdefault(normalize(template), []).append(rel.id)
    for template, ids in AMBIGUOUS.items():
        index.setdefault(normalize(template), [])
        index[normalize(template)] = list(dict.fromkeys([*ids, *index[normalize(template)]]))
    return {k: tuple(v) for k, v in index.items()}


def infer_relations(template: str, *, cutoff: float = 0.88) -> tuple[str, ...]:
    """The relations a prompt template (``{}`` for the subject) may express, most likely first.

    An exact match wins; otherwise the closest known template above ``cutoff`` (difflib ratio) is used,
    which absorbs small differences ("The headquarters of {} are in"). Returns ``()`` when unknown.
    """
    index = _index()
    key = normalize(template)
    if key in index:
        return index[key]
    close = difflib.get_close_matches(key, list(index), n=1, cutoff=cutoff)
    return index[close[0]] if close else ()


def paraphrase_templates(relation_ids: str | Sequence[str], *, exclude: str | None = None) -> list[str]:
    """Templates valid for every relation in ``relation_ids`` (in the first one's order), minus ``exclude``."""
    ids = [relation_ids] if isinstance(relation_ids, str) else list(relation_ids)
    ids = [i for i in ids if i in RELATIONS]
    if not ids:
        return []
    shared = [t for t in RELATIONS[ids[0]].templates if all(t in RELATIONS[i].templates for i in ids[1:])]
    skip = normalize(exclude) if exclude else None
    return [t for t in shared if normalize(t) != skip]


def fill(template: str, subject: str) -> str:
    """Put the subject into a template (``str.format`` would choke on braces inside the subject)."""
    return template.replace("{}", subject, 1)


#: Open prompts about a subject, whatever the relation: what the model writes after them shows whether
#: an edit leaves it fluent about the subject (the fluency gate's ``fluency_prompts``).
OPEN_PROMPTS = (
    "{} is", "The story of {}", "{} was", "Here is what is known about {}:", "{} has", "Most people know {} as",
    "{} became", "A short biography of {}:",
)

#: How many of a relation's other phrasings the probes use; edit methods may train on the rest.
PROBE_PHRASINGS = 3


def split_templates(relation_ids: str | Sequence[str], *, exclude: str | None = None) -> tuple[list[str], list[str]]:
    """(probe, train): the relation's other phrasings the probes test, and the ones an editor may train on.

    The probes take the first :data:`PROBE_PHRASINGS`; the rest are left to the editors, so no gate scores
    a phrasing the edit was optimised on.
    """
    templates = paraphrase_templates(relation_ids, exclude=exclude)
    return templates[:PROBE_PHRASINGS], templates[PROBE_PHRASINGS:]
