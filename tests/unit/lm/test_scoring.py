"""Packed scoring, batched decoding and text statistics agree with the plain, one-at-a-time versions."""

from __future__ import annotations

import math

import pytest
import torch

from cathrepo.gates.generation import contains_answer, ngram_entropy
from cathrepo.lm.decoding import greedy_continuations
from cathrepo.lm.scoring import (
    kl_divergence,
    next_token_logprobs,
    perplexity,
    score_continuations,
    target_logprobs,
)

PROMPTS = ["The Eiffel Tower is located in the city of", "Rome is the capital of", "Apple was founded by"]
PAIRS = [["Rome", "Paris"], ["Italy", "Spain Berlin"], ["Steve Jobs", "London"]]


def test_packed_scores_equal_separate_runs(tiny_model):
    model, tok, _ = tiny_model
    packed = score_continuations(model, tok, PROMPTS, PAIRS, batch_size=2, next_distribution=True)
    flat_prompts = [p for p, pair in zip(PROMPTS, PAIRS, strict=True) for _ in pair]
    flat_targets = [t for pair in PAIRS for t in pair]
    plain = target_logprobs(model, tok, flat_prompts, flat_targets)
    got = [lp for s in packed for lp in s.logprobs]
    for a, b in zip(got, plain, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    for s in packed:
        assert s.next_logprobs is not None
        assert int(s.next_logprobs.argmax()) == s.top1
        assert math.isclose(float(s.next_logprobs.exp().sum()), 1.0, rel_tol=1e-4)


def test_prompt_only_rows_give_the_top_prediction(tiny_llama):
    model, tok, _ = tiny_llama
    only = score_continuations(model, tok, PROMPTS, [[] for _ in PROMPTS])
    with_targets = score_continuations(model, tok, PROMPTS, PAIRS)
    assert [s.top1 for s in only] == [s.top1 for s in with_targets]
    assert all(s.logprobs == () for s in only)


def _generate(model, tok, prompt: str, max_new_tokens: int) -> str:
    """transformers' own greedy ``generate``, one prompt at a time: the reference."""
    import torch

    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_batched_greedy_matches_generate(tiny_model):
    model, tok, _ = tiny_model
    batched = greedy_continuations(model, tok, PROMPTS, max_new_tokens=5, batch_size=3)
    assert batched == [_generate(model, tok, p, max_new_tokens=5) for p in PROMPTS]


def test_kl_of_identical_distributions_is_zero(tiny_llama):
    model, tok, _ = tiny_llama
    (s,) = score_continuations(model, tok, PROMPTS[:1], [[]], next_distribution=True)
    assert kl_divergence(s.next_logprobs, s.next_logprobs) == 0.0


def test_kl_is_in_nats_and_in_the_documented_direction():
    """KL(P ‖ Q) = Σ p log(p / q), worked by hand: P = (1/2, 1/2), Q = (9/10, 1/10) gives
    ½ ln(5/9) + ½ ln 5 = 0.5108 nats, and the other direction 0.9 ln 1.8 + 0.1 ln 0.2 = 0.3681 (log2
    instead of ln, or the arguments swapped, gives another number)."""
    import torch

    p, q = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.9, 0.1]).log()
    assert kl_divergence(p, q) == pytest.approx(0.5 * math.log(5 / 9) + 0.5 * math.log(5), rel=1e-6)
    assert kl_divergence(p, q) == pytest.approx(0.51083, abs=1e-5)
    assert kl_divergence(q, p) == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), rel=1e-6)


def test_ngram_entropy_rewards_variety():
    assert ngram_entropy("the cat the cat the cat the cat the cat") < ngram_entropy(
        "the quick brown fox jumps over the lazy dog near a river bank")
    assert ngram_entropy("") == 0.0


def test_contains_answer_matches_whole_words():
    assert contains_answer("Paris, France.", "paris")
    assert not contains_answer("Parisian food", "Paris")
    assert contains_answer("the Steve Jobs company", "Steve Jobs")


def test_perplexity_is_exp_of_the_mean_token_nll_over_windows(tiny_llama):
    """Batched and padded, the windows give exp(mean NLL) of every token after the first of each window,
    computed here one window at a time with no padding (the last window is shorter than the others)."""
    import torch

    model, tok, _ = tiny_llama
    text = " ".join(PROMPTS * 10)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) % 16 > 1  # a short last window, so padding is exercised
    nll, count = 0.0, 0
    for start in range(0, len(ids), 16):
        window = torch.tensor([ids[start : start + 16]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=window).logits[0, :-1].float(), -1)
        nll -= float(logp.gather(-1, window[0, 1:, None]).sum())
        count += window.shape[1] - 1
    expected = math.exp(nll / count)
    assert perplexity(model, tok, text, window=16, batch_size=3) == pytest.approx(expected, rel=1e-4)
    assert perplexity(model, tok, text, window=16) == pytest.approx(expected, rel=1e-4)


def test_rows_whose_budget_is_spent_leave_the_batch_and_the_rest_decode_as_alone(tiny_llama):
    """Mixed budgets in one batch, a delta on some rows only (the gates' before/after decode): each row
    decodes exactly as it would alone, with or without the delta, however the batch shrinks."""
    import torch

    from cathrepo.delta import Delta, LowRank, applied, applied_to_rows
    from cathrepo.lm.decoding import greedy_token_ids

    model, tok, _ = tiny_llama
    gen = torch.Generator().manual_seed(3)
    weight = model.get_submodule("model.layers.1.mlp.down_proj").weight
    delta = Delta({"model.layers.1.mlp.down_proj": LowRank(torch.randn(weight.shape[0], 1, generator=gen) * 3,
                                                           torch.randn(1, weight.shape[1], generator=gen))})
    prompts = [*PROMPTS, PROMPTS[0], PROMPTS[1]]
    budgets = [2, 9, 5, 9, 1]
    flagged = [False, False, True, True, True]
    seen: list[list[int]] = []

    def around(idx):
        seen.append(list(idx))
        return applied_to_rows(model, delta, torch.tensor([flagged[i] for i in idx]))

    batched = greedy_token_ids(model, tok, prompts, max_new_tokens=budgets, around=around)
    for i, prompt in enumerate(prompts):
        if flagged[i]:
            with applied(model, delta):
                (alone,) = greedy_token_ids(model, tok, [prompt], max_new_tokens=budgets[i])
        else:
            (alone,) = greedy_token_ids(model, tok, [prompt], max_new_tokens=budgets[i])
        assert batched[i] == alone
    assert len(seen) > 1 and len(seen[-1]) < len(seen[0])  # the batch shrank as budgets ran out


def test_length_batches_group_alike_lengths_under_the_token_budget():
    from cathrepo.lm.scoring import length_batches

    lengths = [3, 20, 4, 5, 19, 3, 40]
    batches = length_batches(lengths, batch_size=3, max_tokens=40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every row once
    for batch in batches:
        widths = [lengths[i] for i in batch]
        assert widths == sorted(widths) and len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(widths) <= 40  # only a lone row may exceed the budget
    assert [[lengths[i] for i in b] for b in batches] == [[3, 3, 4], [5, 19], [20], [40]]


def test_few_row_products_agree_with_the_plain_layers_and_are_undone(tiny_llama, monkeypatch):
    import torch

    from cathrepo.lm import decoding
    from cathrepo.lm.decoding import few_row_products, greedy_token_ids

    model, tok, _ = tiny_llama
    layer = model.get_submodule("model.layers.0.mlp.down_proj")
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
    with few_row_products(model):
        assert "forward" in vars(layer)
        replaced = layer(x)
    assert "forward" not in vars(layer)  # restored: the class's forward again
    assert torch.allclose(replaced, plain, atol=1e-5)

    prompts = [*PROMPTS, "The capital of France is"]
    fast = greedy_token_ids(model, tok, prompts, max_new_tokens=8)
    monkeypatch.setattr(decoding, "FEW_ROWS", (0, 0))  # every product the plain way
    assert greedy_token_ids(model, tok, prompts, max_new_tokens=8) == fast


def test_next_token_logprobs_match_one_prompt_at_a_time(tiny_llama):
    model, tok, _ = tiny_llama
    prompts = ["The capital of Italy is", "A", "The city of France is Paris and the river is the"]
    batched = next_token_logprobs(model, tok, prompts, batch_size=2)
    with torch.no_grad():
        alone = torch.stack([model(tok(p, return_tensors="pt").input_ids).logits[0, -1].float().log_softmax(-1)
                             for p in prompts])
    assert batched.shape == alone.shape
    assert torch.allclose(batched, alone, atol=1e-4)
