"""What every command shares: opening the repository from ``-C``, JSON output, progress display."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from cathrepo.repo import Repo


def repo_dir(ctx: click.Context) -> str:
    obj = ctx.find_root().obj or {}
    return str(obj.get("repo_dir", "."))


def open_repo(ctx: click.Context) -> Repo:
    from cathrepo.repo import Repo

    return Repo.open(repo_dir(ctx))


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@contextmanager
def progress(label: str) -> Iterator[Callable[[str], None]]:
    """A transient status line on stderr (only on a terminal); yields the callback the library calls."""
    if not sys.stderr.isatty():
        yield lambda _msg: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(label) as status:
        yield lambda msg: status.update(f"{label}: {msg}")
