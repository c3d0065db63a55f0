"""Option parsing shared by commands."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import InvalidInputError

if TYPE_CHECKING:
    from cathrepo.facts.schema import EditRequest


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``["layer=8", "v_lr=0.3"]`` → ``{"layer": 8, "v_lr": 0.3}`` (values parsed as JSON when they can be)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--param '{item}' is not KEY=VALUE.", hint="For example: --param layer=8.")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def edit_requests(
    *, prompt: str | None, subject: str | None, target: str | None, target_true: str | None,
    facts_file: Path | None, passage_file: Path | None, limit: int | None, method: str | None,
    meta: Mapping[str, Any],
) -> tuple[list[EditRequest], str | None]:
    """What ``cathrepo edit`` was asked to write, and the method (a passage defaults to ``auto``).

    One fact from --prompt/--subject/--target, one request per fact of --file, or one request holding
    every question synthesized from a --passage.
    """
    from cathrepo.facts.schema import EditRequest, Fact, load_facts

    if sum(bool(x) for x in (facts_file, passage_file, prompt or subject or target)) > 1:
        raise InvalidInputError("Give one of --file, --passage or --prompt/--subject/--target.")
    if passage_file:
        from cathrepo.facts.passage import Passage, synthesize_questions

        passage = Passage.from_file(passage_file)
        probes = synthesize_questions(passage)[: limit or None]
        request = EditRequest(probes[0], more=tuple(probes[1:]), passage=passage.to_dict(),
                              **{**meta, "source": meta.get("source") or passage.source})
        return [request], method or "auto"
    if facts_file:
        return [EditRequest(f, **meta) for f in load_facts(facts_file, limit)], method
    if prompt and subject and target:
        fact = Fact(prompt=prompt, subject=subject, target_new=target, target_true=target_true)
        return [EditRequest(fact, **meta)], method
    raise InvalidInputError("Nothing to edit.", hint="Pass --prompt, --subject and --target, --file or --passage.")
