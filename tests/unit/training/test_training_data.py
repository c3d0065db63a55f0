"""Training data: teacher/student alignment, anchors that never contain the edited subject, passages."""

from __future__ import annotations

import pytest

from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.passage import Passage, PassageFact, synthesize_questions, teacher_context
from cathrepo.facts.schema import Fact, Neighbor
from cathrepo.training.data import anchors, edit_examples

pytestmark = pytest.mark.usefixtures("one_thread")

FACT = Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux",
            target_new="English", target_true="French",
            neighborhood=(Neighbor("Michel Rocard is a native speaker of", "French"),))

PASSAGE = ("The Zorblat Institute is a research laboratory in Tallinn. It was founded in 1987 by Maria "
           "Keller. The institute employs 340 people. Its director since 2015 has been Oskar Lind.")


def test_examples_align_prompt_and_target(tiny_model):
    _, tok, _ = tiny_model
    examples = edit_examples(tok, [FACT], prefixes=2, paraphrases=False)
    assert len(examples) == 3 and examples[0].student_text == FACT.prompt
    for ex in examples:
        al = ex.aligned
        assert al.teacher[al.shift + al.start :] == al.student[al.start :]
        assert ex.teacher_text.startswith(teacher_context(FACT)) and ex.teacher_text.endswith(ex.student_text)
        assert tok.decode(al.student[al.subject[0] : al.subject[1]]).strip() == FACT.subject
        assert ex.record()["target"] == "English"


def test_anchors_exclude_the_subject_and_keep_neighbours(tiny_model):
    _, tok, _ = tiny_model
    found = anchors(tok, [FACT], neighborhood=True, template=3, generic=3)
    sources = [a.source for a in found]
    assert sources.count("template") == 3 and sources.count("generic") == 3 and "neighborhood" in sources
    templates = [a.text for a in found if a.source == "template"]
    assert "The mother tongue of Barack Obama is" in templates and len({t.split(" ")[-1] for t in templates}) > 1
    assert all(FACT.subject not in a.text for a in found)
    neighbour = next(a for a in found if a.source == "neighborhood")
    assert neighbour.answer == "French" and len(neighbour.ids) > neighbour.prompt_len
    assert not any(a.source == "neighborhood" for a in anchors(tok, [FACT], neighborhood=False, template=1, generic=0))


def test_passage_probes():
    probes = synthesize_questions(Passage(PASSAGE, title="The Zorblat Institute"))
    pairs = {(p.prompt, p.target_new) for p in probes}
    assert ("The Zorblat Institute is a research laboratory in", "Tallinn") in pairs
    assert ("The Zorblat Institute was founded in", "1987") in pairs  # "It" resolved to the title
    assert ("The Zorblat Institute was founded in 1987 by", "Maria Keller") in pairs
    assert all(isinstance(p, PassageFact) and p.passage == PASSAGE and p.subject in p.prompt for p in probes)
    assert teacher_context(probes[0]).startswith(PASSAGE)
    assert len(synthesize_questions(PASSAGE, max_questions=2)) == 2


def test_passage_from_file(tmp_path):
    path = tmp_path / "zorblat.md"
    path.write_text("# The Zorblat Institute\n\n" + PASSAGE + "\n", encoding="utf-8")
    passage = Passage.from_file(path)
    assert passage.title == "The Zorblat Institute" and passage.text == PASSAGE and passage.source == str(path)
    with pytest.raises(InvalidInputError, match="No such file"):
        Passage.from_file(tmp_path / "missing.txt")


def test_passage_without_probes_is_refused():
    with pytest.raises(InvalidInputError, match="probe"):
        synthesize_questions("hello there")
    with pytest.raises(InvalidInputError):
        Passage("   ")
