"""cathrepo worker start|stop|status: the resident process that keeps torch and the model loaded."""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.group("worker")
def worker_group() -> None:
    """Keep torch, transformers and the base model loaded in a resident process.

    While it runs, model commands (edit, revert, gate, generate, trace, bench) are handed to it with
    this terminal, directory and environment, and each runs in a fresh process forked from it: the same
    output and exit codes, about 9 s sooner. CATHREPO_WORKER=0 keeps a command out of it.
    """


@worker_group.command("start")
@click.option("--base", "bases", multiple=True, metavar="MODEL",
              help="Base model to preload (repeatable; default: this repository's base, else the embedded model).")
@click.option("--no-model", is_flag=True, help="Preload the libraries only.")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=1800.0, show_default=True,
              help="Seconds without a command before the worker exits (0: never).")
@click.option("--foreground", is_flag=True, help="Serve in this process (logs on stderr) instead of in the background.")
@click.pass_context
def start_cmd(ctx: click.Context, bases: tuple[str, ...], no_model: bool, idle_timeout: float,
              foreground: bool) -> None:
    """Start the worker (replacing one that runs)."""
    from cathrepo.cli import worker

    chosen = [] if no_model else list(bases) or [_default_base(ctx)]
    if foreground:
        from cathrepo.cli.worker_server import serve

        serve(chosen, idle_timeout)
        return
    found = worker.start(chosen, idle_timeout)
    models = ", ".join(found["preloaded"]) or "no model"
    click.echo(f"worker {found['pid']} ready: {models} loaded in {found['load_s']} s ({found['socket']})")


@worker_group.command("stop")
def stop_cmd() -> None:
    """Stop the worker (commands it is running finish first)."""
    from cathrepo.cli import worker

    pid = worker.stop()
    click.echo("no worker is running" if pid is None else f"worker {pid} stopped")


@worker_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_cmd(as_json: bool) -> None:
    """Whether a worker runs, what it preloaded and how many commands it served."""
    from cathrepo.cli import worker

    found = worker.status()
    if as_json:
        echo_json(found or {"running": False})
    elif found is None:
        click.echo("no worker is running")
    else:
        state = "" if found["fresh"] else " (stale: it runs other code; restart it with 'cathrepo worker start')"
        click.echo(f"worker {found['pid']}{state}: {', '.join(found['preloaded']) or 'no model'}, "
                   f"{found['served']} command(s) served, up {found['uptime_s']} s")


def _default_base(ctx: click.Context) -> str:
    from cathrepo.exceptions import CathrepoError
    from cathrepo.models import DEFAULT_MODEL

    try:
        return open_repo(ctx).config.base.source
    except CathrepoError:
        return DEFAULT_MODEL
