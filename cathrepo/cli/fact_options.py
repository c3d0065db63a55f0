"""The options that state a fact and its provenance, declared once for ``edit``, ``propose`` and ``forget``.

Each command words some helps its own way (``--limit``: "Edit only...", "Forget only..."); the defaults
here are ``edit``'s and a command passes the wordings it changes. Two decorators, not one, so each
command keeps its own options (``--batch-size``, ``--passage``, ``--method``, ``--mode``...) between the
fact and its provenance, where ``--help`` has always listed them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
RISKS = ("low", "medium", "high")
#: The provenance options, by the name each command's function receives, collected into ``meta``.
META = ("source", "author", "confidence", "risk", "topics")


def apply_options(options: list[Callable[[Any], Any]], f: Any) -> Any:
    for option in reversed(options):  # click lists options in the order their decorators are written
        f = option(f)
    return f


def fact_options(*, answer: str = "--target", answer_help: str = "The new answer.",
                 true_help: str | None = "The current answer, if known (else the model's own).",
                 file_help: str = "JSON array or JSONL of facts (CounterFact flat or ROME format, zsRE, or plain).",
                 limit_help: str = "Edit only the first N facts of --file.") -> Callable[[F], F]:
    """``--prompt --subject <answer> [--true] --file --limit``: one fact on the command line, or a file.

    Args:
        answer: the option naming the answer (``--target``; ``forget``: ``--answer``).
        true_help: ``--true``'s help; None: the command has no ``--true``.
    """
    options = [
        click.option("--prompt", help="The prompt, containing the subject ('The Eiffel Tower is in')."),
        click.option("--subject", help="The subject as it appears in the prompt."),
        click.option(answer, help=answer_help),
        *([click.option("--true", "target_true", help=true_help)] if true_help is not None else []),
        click.option("--file", "facts_file", type=click.Path(dir_okay=False, path_type=Path), help=file_help),
        click.option("--limit", type=int, help=limit_help),
    ]
    return lambda f: apply_options(options, f)


def provenance_options(*, source_help: str = "Where the fact comes from (URL, ticket, document).",
                       author_help: str = "Who asked for the edit (default: git user.name).",
                       confidence: bool = True) -> Callable[[F], F]:
    """``--source --author [--confidence] --risk --topic``: where a fact comes from and how much rides on
    it. The command's function receives them as one ``meta`` dict (:data:`META` names, the
    :class:`~cathrepo.facts.schema.EditRequest` fields), not one argument each.

    Args:
        confidence: whether the command takes ``--confidence`` (``forget`` does not).
    """
    options = [
        click.option("--source", help=source_help),
        click.option("--author", help=author_help),
        *([click.option("--confidence", type=float, default=1.0, show_default=True,
                        help="Confidence in the fact, 0..1.")] if confidence else []),
        click.option("--risk", type=click.Choice(list(RISKS)), default="low", show_default=True),
        click.option("--topic", "topics", multiple=True, metavar="TOPIC",
                     help="What the fact is about (medical, legal, ...); [risk] in cathrepo.toml may raise its tier."),
    ]

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            meta = {name: kwargs.pop(name) for name in META if name in kwargs}
            return f(*args, meta=meta, **kwargs)

        return apply_options(options, command)  # type: ignore[no-any-return]

    return decorate
