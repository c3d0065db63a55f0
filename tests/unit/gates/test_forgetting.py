"""The forgetting gates on a tiny model: each passes when the answer is pushed out and fails when it is not."""

from __future__ import annotations

import pytest
import torch

from cathrepo.delta import Delta, LowRank
from cathrepo.facts.probes import Probe, ProbeSet
from cathrepo.gates.base import run_gates
from cathrepo.gates.forgetting import answer_ranks, shifted_prompts
from cathrepo.gates.policy import GatePolicy
from cathrepo.lm.tokens import first_token_id
from tests.helpers import changed_weights, snapshot

PROMPT = "The capital of Italy is Rome"
WORDS = ("Paris", "Tokyo", "French", "London", "Berlin", "German", "Apple", "guitar")
GATES = ["forget_rank", "forget_generation", "relearn"]


def _answer(model, tok):
    """The candidate word the tiny model ranks highest after PROMPT, and its rank."""
    ranks = answer_ranks(model, tok, [("plain", PROMPT, w) for w in WORDS])
    best = min(range(len(WORDS)), key=lambda i: ranks[i][0])
    return WORDS[best], ranks[best][0]


def _push_down(model, tok, answer, strength=300.0):
    """A rank-one write at the last MLP output that lowers ``answer``'s logit at PROMPT's last token."""
    from cathrepo.lm.hooks import forward_until
    from cathrepo.lm.tokens import first_token_id
    from cathrepo.models import family_for, num_layers

    name = family_for(model).layer_name("mlp_out", num_layers(model) - 1)
    with torch.no_grad():
        key = forward_until(model, name, inputs=True, input_ids=tok(PROMPT, return_tensors="pt")["input_ids"])[0, -1]
    u = model.get_output_embeddings().weight.detach()[first_token_id(tok, answer)].float()
    return Delta({name: LowRank((-strength * u / u.norm())[:, None], (key / key.norm() ** 2)[None, :])})


def _run(model, tok, answer, after, **policy):
    probes = ProbeSet((Probe("forget", PROMPT, answer, None, "record"),), "Rome", None, "forget")
    pol = GatePolicy(forget_formats=("plain",), relearn_steps=2, relearn_tokens=16, forget_samples=1, **policy)
    return run_gates(model, tok, before=(), after=after, probes=probes, policy=pol, stage="forget", gates=GATES)


def test_gates_pass_when_the_answer_is_pushed_out(tiny_llama, one_thread):
    model, tok, _ = tiny_llama
    answer, rank = _answer(model, tok)
    before = snapshot(model)
    report = _run(model, tok, answer, (_push_down(model, tok, answer),), forget_top_k=rank + 1, relearn_lr=1e-6,
                  generation_tokens=4)
    assert not changed_weights(model, before)  # the relearning probe restores the weights bit for bit
    by = {r.name: r for r in report.results}
    assert by["forget_rank"].passed and by["forget_rank"].metrics["out_of_top"] == 1.0
    assert by["forget_rank"].metrics["out_of_top_before"] == 0.0
    assert by["relearn"].passed and "prob_came_back" in by["relearn"].metrics
    assert by["forget_generation"].passed


def test_gates_fail_when_the_answer_stays(tiny_llama, one_thread):
    model, tok, _ = tiny_llama
    answer, rank = _answer(model, tok)
    noop = Delta({"model.layers.0.mlp.down_proj": LowRank(torch.zeros(32, 1), torch.zeros(1, 64))})
    report = _run(model, tok, answer, (noop,), forget_top_k=rank + 1)
    by = {r.name: r for r in report.results}
    assert not by["forget_rank"].passed and "top k" in by["forget_rank"].detail
    assert not by["relearn"].passed and by["relearn"].metrics["stays_forgotten"] == 0.0


def test_forget_generation_fails_on_a_continuation_that_says_the_answer(tiny_llama, one_thread):
    from cathrepo.lm.decoding import greedy_continuations

    model, tok, _ = tiny_llama
    said = greedy_continuations(model, tok, [PROMPT], max_new_tokens=4)[0].split()
    if not said or not said[0].isalpha():
        pytest.skip("the tiny model's continuation starts with no word")
    noop = Delta({"model.layers.0.mlp.down_proj": LowRank(torch.zeros(32, 1), torch.zeros(1, 64))})
    report = _run(model, tok, said[0], (noop,), generation_tokens=4)
    assert not {r.name: r for r in report.results}["forget_generation"].passed


def test_gates_skip_an_edit_and_shifts_end_with_the_prompt(tiny_llama):
    model, tok, _ = tiny_llama
    probes = ProbeSet((Probe("rewrite", PROMPT, "Paris", "Tokyo", "record"),), "Rome", None, "edit")
    report = run_gates(model, tok, after=(), probes=probes, stage="forget", gates=GATES)
    assert all(r.skipped for r in report.results)
    shifts = dict(shifted_prompts(tok, PROMPT, "Rome", ("plain", "question", "chat", "fewshot")))
    assert "chat" not in shifts  # the tiny tokenizer has no template
    assert all(text.endswith(PROMPT) for text in shifts.values()) and shifts["fewshot"].count("\n") == 3


def test_answer_ranks_in_batches_are_each_row_read_alone(tiny_llama, one_thread):
    model, tok, _ = tiny_llama
    rows = [("plain", text, w) for text in (PROMPT, "Rome", "The tower stands in the city of Paris and", "A")
            for w in WORDS[:3]]
    batched = answer_ranks(model, tok, rows)
    for (_, text, word), (rank, prob) in zip(rows, batched, strict=True):
        with torch.no_grad():
            logits = model(**tok(text, return_tensors="pt")).logits[0, -1].float()
        token = first_token_id(tok, word)
        assert rank == int((logits > logits[token]).sum())
        assert prob == pytest.approx(float(torch.softmax(logits, -1)[token]), rel=1e-4, abs=1e-7)


def test_sampled_continuations_are_seeded_per_prompt_whatever_the_batch(tiny_llama, one_thread):
    from cathrepo.lm.decoding import greedy_continuations, sampled_continuations

    model, tok, _ = tiny_llama
    prompts = [PROMPT, "Rome", "The tower stands in the city of Paris and", "A", PROMPT]
    together = sampled_continuations(model, tok, prompts, seed=3, max_new_tokens=6)
    alone = [sampled_continuations(model, tok, prompts, seed=3, max_new_tokens=6, batch_size=1)[i] for i in range(5)]
    assert together == alone
    other = sampled_continuations(model, tok, prompts, seed=4, max_new_tokens=6)
    assert together != other  # the seed decides the samples
    greedy = greedy_continuations(model, tok, prompts, max_new_tokens=6)
    assert any(s != g for s, g in zip(together + other, greedy * 2, strict=True))  # it samples, not greedy


def test_an_inverse_prompt_that_still_gives_the_subject_fails_forget_rank(tiny_llama, one_thread):
    """The prompt's answer pushed out, but the relation read backwards still gives the subject: a leak
    through the inverse, reported as ``out_of_top_inverse`` and refused."""
    model, tok, _ = tiny_llama
    answer, rank = _answer(model, tok)
    inverse = "Italy is home to"
    subject_rank = answer_ranks(model, tok, [("plain", inverse, "Rome")])[0][0]
    probes = ProbeSet((Probe("forget", PROMPT, answer, None, "record"),
                       Probe("forget", inverse, "Rome", None, "inverse")), "Rome", None, "forget")
    pol = GatePolicy(forget_formats=("plain",), forget_top_k=max(rank, subject_rank) + 1)
    report = run_gates(model, tok, before=(), after=(_push_down(model, tok, answer),), probes=probes, policy=pol,
                       stage="forget", gates=["forget_rank"])
    (result,) = report.results
    assert not result.passed and result.metrics["out_of_top_inverse"] == 0.0 and result.metrics["out_of_top"] == 0.5
    assert "Italy is home to" in result.detail
