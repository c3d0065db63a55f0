"""Probes: relation templates, probe building from records and known facts, probes.jsonl round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.probes import Probe, ProbeSet, build_probes, load_known_facts
from cathrepo.facts.schema import Fact, fact_from_record, load_facts
from cathrepo.facts.templates import (
    AMBIGUOUS,
    RELATIONS,
    infer_relations,
    paraphrase_templates,
    split_templates,
)

DATA = Path(__file__).parents[2] / "data"
GOLDEN = Path(__file__).parent / "data" / "probes-golden.jsonl"


@pytest.fixture(scope="module")
def known():
    return load_known_facts(DATA / "known-sample.json")


@pytest.fixture(scope="module")
def records():
    return load_facts(DATA / "counterfact-sample.json")


def test_templates_infer_the_relation():
    assert infer_relations("The mother tongue of {} is")[0] == "P103"
    assert infer_relations("The  headquarters of {} is in ")[0] == "P159"  # whitespace noise
    assert infer_relations("The headquarters of {} are in")[0] == "P159"  # a close phrasing
    assert set(infer_relations("{} is located in")) >= {"P17", "P30", "P131", "P276"}
    assert not infer_relations("What colour is the sky above {}?")


def test_ambiguous_templates_paraphrase_with_shared_phrasings_only():
    shared = paraphrase_templates(infer_relations("{} is located in"), exclude="{} is located in")
    assert shared and "{} is located in" not in shared
    assert "{} belongs to the continent of" not in shared  # valid for P30 only
    for rid in infer_relations("{} is located in"):
        assert set(shared) <= set(RELATIONS[rid].templates)


def test_every_unambiguous_wording_leaves_the_editor_phrasings_no_probe_uses():
    # ROME optimises the value on the relation's phrasings the probes leave out: a relation worded by a
    # template shared by several relations ("{} is located in") may only use phrasings valid for all of them
    for rel in RELATIONS.values():
        for template in rel.templates:
            if template in AMBIGUOUS:
                continue
            probe, train = split_templates(infer_relations(template), exclude=template)
            assert probe and train, template
            assert not set(probe) & set(train) and template not in probe + train


def test_every_sample_record_gets_a_relation(records):
    assert all(infer_relations(f.template) for f in records)


def test_build_probes_from_a_counterfact_record(records, known):
    probes = build_probes(records[0], known_facts=known, n_paraphrases=2)
    rewrite = probes.of_kind("rewrite")
    assert rewrite == [Probe("rewrite", records[0].prompt, "English", "French", "record")]
    paraphrases = probes.of_kind("paraphrase")
    assert paraphrases[0].source == "record" and len(paraphrases) == 3
    assert all(p.target == "English" and p.other == "French" for p in paraphrases)
    neighbours = probes.of_kind("neighborhood")
    assert neighbours[0] == Probe("neighborhood", "Michel Rocard is a native speaker of", "French", "English")
    assert probes.relation_id == "P103" and probes.meta == {"case_id": 0}
    assert probes.of_kind("generation")


def test_neighbours_and_attributes_are_mined_from_the_same_relation(known):
    fact = Fact(prompt="Toko Yasuda is located in the continent of", subject="Toko Yasuda",
                target_new="Europe", target_true="Asia")
    probes = build_probes(fact, known_facts=known, n_neighbors=3, n_attribute=1)
    mined = [p for p in probes.of_kind("neighborhood") if p.source == "mined"]
    assert len(mined) == 3
    pool = {k.prompt: k for k in known}
    assert all(pool[p.prompt].relation_id == "P30" and p.other == "Europe" for p in mined)
    assert all(p.target != "Europe" for p in mined)
    for p in probes.of_kind("attribute"):
        assert p.target == "Europe" and pool[p.prompt].relation_id == "P30"


def test_mining_with_a_model_keeps_only_answers_it_gives(tiny_llama, known):
    """Mined neighbours are exactly the same-relation facts whose answer is the model's top next token.

    The random model gives none of the sample's answers, so the pool is rewritten: where the model's
    top token after a prompt spells a word, that word becomes the fact's answer (the model "knows" it);
    the other facts keep their real answers, which it does not give.
    """
    from dataclasses import replace

    import torch

    from cathrepo.lm.tokens import first_token_id

    model, tok, _ = tiny_llama
    words: dict[int, str] = {}
    for token in range(len(tok)):
        word = tok.decode([token]).strip()
        if word.isalpha():
            words.setdefault(first_token_id(tok, word), word)
    pool, answered = [], []
    for k in (k for k in known if k.relation_id == "P30"):
        with torch.no_grad():
            top = int(model(input_ids=torch.tensor([tok(k.prompt)["input_ids"]])).logits[0, -1].argmax())
        if top in words:
            k = replace(k, answer=words[top])
            answered.append(k.prompt)
        else:
            assert first_token_id(tok, k.answer) != top
        pool.append(k)
    assert answered and len(answered) < len(pool)  # both kinds are there, or the test shows nothing
    fact = Fact(prompt="Toko Yasuda is located in the continent of", subject="Toko Yasuda",
                target_new="Europe", target_true="Asia")
    probes = build_probes(fact, model, tok, known_facts=pool, n_neighbors=len(pool))
    mined = [p.prompt for p in probes.of_kind("neighborhood") if p.source == "mined"]
    assert sorted(mined) == sorted(answered)
    unchecked = build_probes(fact, known_facts=pool, n_neighbors=len(pool))  # no model: nothing is dropped
    assert set(answered) < {p.prompt for p in unchecked.of_kind("neighborhood") if p.source == "mined"}


def test_missing_target_true_is_filled_from_the_model(tiny_llama, known):
    """Whatever the random model says is recorded as the answer to beat: its greedy continuation (here
    from transformers' ``generate``) up to the first punctuation, at most three words."""
    import re

    import torch

    model, tok, _ = tiny_llama
    fact = Fact(prompt="The Eiffel Tower is located in the city of", subject="The Eiffel Tower", target_new="Rome")
    enc = tok(fact.prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    expected = " ".join(re.split(r"[.,;:!?\n]| and | who | which ", text)[0].split()[:3])
    assert expected
    probes = build_probes(fact, model, tok, known_facts=known)
    (rewrite,) = probes.of_kind("rewrite")
    assert rewrite.other == expected
    assert all(p.other == expected for p in probes.of_kind("paraphrase"))


def test_forget_probes(known):
    fact = Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux",
                target_new="French", action="forget")
    probes = build_probes(fact, known_facts=known)
    assert probes.action == "forget"
    assert not probes.of_kind("rewrite", "paraphrase", "attribute")
    forget = probes.of_kind("forget")
    assert forget[0].prompt == fact.prompt and all(p.target == "French" and p.other is None for p in forget)


def test_zsre_records_build_without_a_relation(known):
    (fact,) = load_facts(DATA / "zsre-sample.json", limit=1)
    probes = build_probes(fact, known_facts=known)
    assert probes.relation_id is None
    assert [p.source for p in probes.of_kind("paraphrase", "neighborhood")] == ["record", "record"]


def test_jsonl_golden_file(records, known):
    probes = build_probes(records[6], known_facts=known, n_paraphrases=2, n_neighbors=2)
    assert probes.to_jsonl() == GOLDEN.read_text(encoding="utf-8")
    assert ProbeSet.from_jsonl(GOLDEN.read_text(encoding="utf-8")) == probes
    # a probes.jsonl committed before schema 2 (its header said "fact_kind") still reads the same
    assert ProbeSet.from_jsonl((GOLDEN.parent / "probes-schema1.jsonl").read_text(encoding="utf-8")) == probes


def test_a_probes_file_without_its_header_reads(records, known):
    probes = build_probes(records[2], known_facts=known)
    headerless = "".join(line + "\n" for line in probes.to_jsonl().splitlines()[1:])
    assert ProbeSet.from_jsonl(headerless).probes == probes.probes


def test_bad_probes_are_refused():
    with pytest.raises(InvalidInputError, match="kind"):
        Probe("rewrit", "p", "t")
    with pytest.raises(InvalidInputError, match="schema_version"):
        ProbeSet.from_jsonl('{"type": "cathrepo.probes", "schema_version": 9}\n')


def test_shipped_known_facts_load():
    facts = load_known_facts()
    assert len(facts) == 1209 and facts[0].subject == "Vinson Massif" and facts[0].relation_id == "P30"


def test_prefiltered_known_facts_give_the_same_probes(tiny_llama, known, records):
    from cathrepo.facts.probes import known_by_model

    model, tok, _ = tiny_llama
    answered = known_by_model(model, tok, known)
    for fact in records[:8]:
        checked = build_probes(fact, model, tok, known)
        assert build_probes(fact, model, tok, answered, check_known=False) == checked


def test_a_forgets_inverse_prompts_become_forget_probes_of_the_subject():
    fact = Fact("The Eiffel Tower is located in", "The Eiffel Tower", "Paris", action="forget",
                inverse_prompts=("Paris is home to",))
    probes = build_probes(fact, n_paraphrases=1, n_neighbors=0)
    (inverse,) = [p for p in probes.probes if p.source == "inverse"]
    assert (inverse.kind, inverse.prompt, inverse.target) == ("forget", "Paris is home to", "The Eiffel Tower")
    assert all(p.prompt != "Paris is home to" for p in probes.of_kind("generation"))
    edit = Fact("The Eiffel Tower is located in", "The Eiffel Tower", "Rome", inverse_prompts=("Paris is home to",))
    assert not [p for p in build_probes(edit, n_neighbors=0).probes if p.source == "inverse"]  # an edit ignores them
    assert Fact.from_dict(fact.to_dict()) == fact and "inverse_prompts" not in Fact("a b", "a", "c").to_dict()
    record = {"prompt": "The Eiffel Tower is located in", "subject": "The Eiffel Tower", "target_new": "Paris",
              "action": "forget", "inverse_prompts": ["Paris is home to"]}
    assert fact_from_record(record) == fact
    with pytest.raises(InvalidInputError, match="inverse prompts"):
        Fact("a b", "a", "c", inverse_prompts=("",))
