"""``cathrepo serve`` on the real embedded model (SmolLM2-135M-Instruct) over loopback HTTP: the edited
answer for the whole active set, the base answer for a tenant without the edit, the model's own chat
template for chat, and each answer equal to ``cathrepo generate`` at the same ref and tenant."""

from __future__ import annotations

import pytest

from cathrepo.config import TenantConfig
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo
from tests.func.test_serve import call, serving
from tests.slow.test_explain_real import EIFFEL, _configure

pytestmark = pytest.mark.slow


def test_serve_answers_per_tenant_on_the_real_model(tmp_path):
    repo = Repo.init(tmp_path / "repo", author="slow@example.com")
    _configure(repo, {})
    (eiffel,) = [o.edit_id for o in repo.edit([EditRequest(EIFFEL, source="test://eiffel", risk="low")])]
    _configure(repo, {"no-eiffel": TenantConfig(exclude=[f"edit:{eiffel}"])})
    messages = [{"role": "user", "content": "Where is the Eiffel Tower? Answer in one word."}]
    with serving(repo, ref="main") as (url, server):
        chat_text = server.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert "<|im_start|>assistant" in chat_text
        for model, tenant in (("main", None), ("no-eiffel", "no-eiffel")):
            status, out = call(url, "/v1/completions", {"model": model, "prompt": EIFFEL.prompt, "max_tokens": 4})
            assert status == 200, out
            text = out["choices"][0]["text"]
            assert text.strip() == repo.generate(EIFFEL.prompt, "main", max_new_tokens=4, tenant=tenant).text
            assert ("Rome" in text) == (tenant is None), text
            assert [e["id"] for e in out["cathrepo"]["edits"]] == ([eiffel] if tenant is None else [])
            status, chat = call(url, "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 8})
            assert status == 200, chat
            content = chat["choices"][0]["message"]["content"]
            assert content.strip() == repo.generate(chat_text, "main", max_new_tokens=8, tenant=tenant).text
            assert chat["usage"]["prompt_tokens"] == len(server.tokenizer(chat_text)["input_ids"])
