"""Requests as the OpenAI API words them, turned into prompts and generations.

:func:`request_params` reads and bounds the sampling parameters, :func:`chat_prompt` turns chat messages
into one prompt through the tokenizer's chat template, :func:`complete_batch` generates for several
requests at once with ``transformers``' ``generate`` (greedy at temperature 0, as ``cathrepo generate``
decodes, else sampled) within a deadline, and cuts each text at its first stop string.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cathrepo.exceptions import InvalidInputError

#: Parameters of the OpenAI API this server refuses rather than silently ignores, and the value it accepts.
UNSUPPORTED = {"stream": False, "n": 1, "best_of": 1, "echo": False, "logprobs": None, "suffix": None}
#: Penalties it does not implement: only their neutral value is accepted.
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0}
#: The prompt format for a tokenizer without a chat template (tiny test models, base models).
PLAIN_CHAT = "{role}: {content}\n"


class ParamError(InvalidInputError):
    """A request parameter the server refuses (answered 400, naming ``param``)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Limits:
    """The server's bounds on one request."""

    max_prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class Params:
    """Sampling parameters of one request."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Output:
    """A generation: its text, why it ended (``stop`` or ``length``) and the token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        """OpenAI's ``usage`` field."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ParamError(f"'{name}' must be a number from {low} to {high}.", param=name)
    return float(value)


def request_params(body: Mapping[str, Any], limits: Limits, *, default_max_tokens: int = 16) -> Params:
    """The sampling parameters of a request body, checked against ``limits``.

    Raises:
        InvalidInputError: a value out of range, an unsupported option, or ``max_tokens`` over the cap
            (the exception's hint names the parameter).
    """
    for name, accepted in {**UNSUPPORTED, **NEUTRAL}.items():
        if name in body and body[name] is not None and body[name] != accepted:
            raise ParamError(f"'{name}' = {body[name]!r} is not supported by this server "
                                    f"(only {accepted!r}).", param=name)
    default_max_tokens = min(default_max_tokens, limits.max_tokens)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ParamError("'max_tokens' must be a positive integer.", param="max_tokens")
    if max_tokens > limits.max_tokens:
        raise ParamError(f"'max_tokens' is {max_tokens}; this server generates at most "
                                f"{limits.max_tokens} tokens per request.", param="max_tokens")
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ParamError("'stop' must be a string or a list of up to 4 non-empty strings.", param="stop")
    return Params(max_tokens=max_tokens, temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
                  top_p=_number(body, "top_p", 1.0, 1e-6, 1.0), stop=tuple(stop))


def completion_prompt(body: Mapping[str, Any]) -> str:
    """The ``prompt`` of a completions request: a string, or a list holding one string."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ParamError("'prompt' must be a non-empty string (one prompt per request).", param="prompt")
    return prompt


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """The ``messages`` of a chat request, each a role and string content."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ParamError("'messages' must be a non-empty list.", param="messages")
    out = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise ParamError("Each message needs a 'role' (system, user or assistant) and string "
                                    "'content'.", param="messages")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt the model continues for ``messages``: its chat template with the assistant's turn opened,
    or, when the tokenizer has none, one ``role: content`` line per message and ``assistant:``."""
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))
    return "".join(PLAIN_CHAT.format(**m) for m in messages) + "assistant:"


def prompt_ids(tokenizer: Any, prompt: str, limits: Limits) -> list[int]:
    """The token ids of ``prompt``, refused when longer than the server allows."""
    ids = list(tokenizer(prompt)["input_ids"])
    if len(ids) > limits.max_prompt_tokens:
        raise ParamError(f"The prompt is {len(ids)} tokens; this server accepts at most "
                                f"{limits.max_prompt_tokens}.", param="prompt")
    return ids


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids generation ends at: the generation config's end-of-sequence ids, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def complete_batch(model: Any, tokenizer: Any, rows: Sequence[tuple[list[int], Params]], *,
                   deadline: float) -> list[Output | None]:
    """Generate from several prompts at once (token ids, each with its parameters) in one ``generate``
    call, left-padded; None for a row the ``deadline`` (``time.monotonic()``) cut short.

    The rows must share a sampling mode (all greedy, or the same temperature and top_p); each is cut to
    its own ``max_tokens`` and its first stop id. A greedy row gets the tokens it would get alone (the
    padding is masked and positions count real tokens only), up to float rounding of a larger batch.
    """
    import torch
    from transformers import GenerationConfig

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return [None] * len(rows)
    stops = stop_ids(model, tokenizer)
    first = rows[0][1]
    sample = first.temperature > 0
    fill = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0]
    width = max(len(ids) for ids, _ in rows)
    inputs = torch.tensor([[fill] * (width - len(ids)) + ids for ids, _ in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows], dtype=torch.long)
    config = GenerationConfig(max_new_tokens=max(p.max_tokens for _, p in rows), do_sample=sample, num_beams=1,
                              temperature=first.temperature if sample else None,
                              top_p=first.top_p if sample else None, top_k=None, eos_token_id=stops or None,
                              pad_token_id=fill, max_time=remaining)
    with torch.no_grad():
        out = model.generate(inputs, attention_mask=mask, generation_config=config)
    return [_output(tokenizer, [int(t) for t in out[row, width:]], ids, params, set(stops))
            for row, (ids, params) in enumerate(rows)]


def _output(tokenizer: Any, new: list[int], ids: list[int], params: Params, stops: set[int]) -> Output | None:
    """One row's generated ids as an :class:`Output`: cut to its budget, its first stop id and its first
    stop string; None when it ended on neither a stop nor its budget (the time ran out)."""
    new = new[:params.max_tokens]
    end = next((i for i, t in enumerate(new) if t in stops), None)
    if end is None and len(new) < params.max_tokens:
        return None
    text = tokenizer.decode(new[:end], skip_special_tokens=True)
    reason = "stop" if end is not None else "length"
    cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
    if cut >= 0:
        text, reason = text[:cut], "stop"
    return Output(text, reason, len(ids), len(new) if end is None else end + 1)
