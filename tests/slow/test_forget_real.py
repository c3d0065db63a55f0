"""``cathrepo forget`` on the real embedded model (SmolLM2-135M-Instruct) with the default gates: a known
fact is suppressed in a signed commit (the answer out of the top 10 on the prompt as asked, as a question
and in a chat turn), and reverting the forget gives the answer back bit for bit."""

from __future__ import annotations

import subprocess

import pytest
import torch

from cathrepo.facts.schema import EditRequest, Fact
from cathrepo.gates.forgetting import answer_ranks, shifted_prompts
from cathrepo.repo import Repo

pytestmark = pytest.mark.slow
# one of the report's known facts that `bench forget --mode suppress` committed (BENCHMARKS.md)
FACT = Fact(prompt="The capital of Roman Republic is", subject="Roman Republic", target_new="Rome", action="forget")


def _logits(model, tok) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(FACT.prompt, return_tensors="pt")).logits[0, -1].clone()


def _ranks(model, tok) -> list[int]:
    rows = [(f, text, FACT.target_new) for f, text in shifted_prompts(tok, FACT.prompt, FACT.subject,
                                                                          ("plain", "question", "chat"))]
    return [rank for rank, _ in answer_ranks(model, tok, rows)]


def test_suppress_forgets_a_known_fact_and_a_revert_restores_it_bit_for_bit(tmp_path):
    repo = Repo.init(tmp_path / "repo", author="slow@example.com")
    model, tok = repo.load_base()
    base = _logits(model, tok)
    assert _ranks(model, tok)[0] == 0  # the model knows it

    (outcome,) = repo.forget([EditRequest(FACT, source="test://forget")], mode="suppress")
    assert outcome.commit and outcome.report.stage == "forget" and outcome.report.passed
    assert outcome.report["forget_rank"].metrics["out_of_top"] == 1.0
    assert subprocess.run(["git", "verify-commit", outcome.commit], cwd=repo.root).returncode == 0
    assert repo.verify().ok
    forgot = repo.materialize()
    assert min(_ranks(forgot.model, forgot.tokenizer)) >= 10

    repo.revert(outcome.edit_id)
    restored = repo.materialize()
    assert torch.equal(_logits(restored.model, restored.tokenizer), base)
    assert _ranks(restored.model, restored.tokenizer)[0] == 0
