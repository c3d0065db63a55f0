"""Request parameters as OpenAI words them: defaults, bounds, refusals naming the parameter, and chat
prompts with and without a chat template."""

from __future__ import annotations

import pytest

from cathrepo.serve.inference import (
    Limits,
    ParamError,
    Params,
    chat_messages,
    chat_prompt,
    completion_prompt,
    request_params,
)

LIMITS = Limits(max_prompt_tokens=100, max_tokens=64)


def test_defaults_and_accepted_values():
    assert request_params({}, LIMITS) == Params(max_tokens=16, temperature=0.0, top_p=1.0, stop=())
    assert request_params({}, Limits(100, 8)).max_tokens == 8  # the default never exceeds the cap
    got = request_params({"max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "stop": "\n", "stream": False,
                          "n": 1, "logprobs": None, "presence_penalty": 0, "user": "x"}, LIMITS)
    assert got == Params(max_tokens=64, temperature=0.7, top_p=0.9, stop=("\n",))
    assert request_params({"max_completion_tokens": 5, "stop": ["a", "b"]}, LIMITS).max_tokens == 5


@pytest.mark.parametrize(("body", "param"), [
    ({"max_tokens": 65}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "8"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stream": True}, "stream"),
    ({"n": 2}, "n"),
    ({"logprobs": 5}, "logprobs"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
])
def test_refusals_name_the_parameter(body, param):
    with pytest.raises(ParamError) as caught:
        request_params(body, LIMITS)
    assert caught.value.param == param and caught.value.message


def test_prompts_and_messages():
    assert completion_prompt({"prompt": "Hi"}) == completion_prompt({"prompt": ["Hi"]}) == "Hi"
    for bad in ({}, {"prompt": ""}, {"prompt": ["a", "b"]}, {"prompt": 3}):
        with pytest.raises(ParamError, match="prompt"):
            completion_prompt(bad)
    messages = chat_messages({"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hi", "name": "ignored"}]})
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for bad in ({}, {"messages": []}, {"messages": [{"role": "tool", "content": "x"}]},
                {"messages": [{"role": "user", "content": ["parts"]}]}):
        with pytest.raises(ParamError, match="message"):
            chat_messages(bad)


class _Plain:
    chat_template = None


class _Templated:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "<|im_start|>" + "|".join(m["content"] for m in messages) + "<|im_start|>assistant\n"


def test_chat_prompt_uses_the_template_or_plain_lines():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert chat_prompt(_Plain(), messages) == "system: S\nuser: U\nassistant:"
    assert chat_prompt(_Templated(), messages) == "<|im_start|>S|U<|im_start|>assistant\n"
