"""What every command shares: opening the repository from ``-C``, JSON output, progress display."""

from __future__ import annotations

import json
import sys
import threading
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
def progress(label: str, delay: float = 1.0) -> Iterator[Callable[[str], None]]:
    """A transient status line on stderr; yields the callback the library calls with each stage.

    It shows only when both stdout and stderr are terminals (piped output carries nothing but results)
    and only once the work has taken ``delay`` seconds, so quick commands do not flash a spinner.
    """
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        yield lambda _msg: None
        return
    from rich.console import Console

    status = Console(stderr=True).status(label)
    lock, done = threading.Lock(), threading.Event()

    def show() -> None:
        with lock:
            if not done.is_set():
                status.start()

    timer = threading.Timer(delay, show)
    timer.daemon = True
    timer.start()
    try:
        yield lambda msg: status.update(f"{label}: {msg}")
    finally:
        with lock:
            done.set()
            timer.cancel()
            status.stop()
