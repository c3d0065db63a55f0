"""cathrepo push / cathrepo pull: edit weights to and from the DVC remote."""

from __future__ import annotations

import click

from cathrepo.cli.shared import open_repo


@click.command("push")
@click.pass_context
def push_cmd(ctx: click.Context) -> None:
    """Upload every revision's edit weights to the DVC remote."""
    repo = open_repo(ctx)
    n = repo.push()
    click.echo(f"pushed {n} file(s) to {repo.storage.remote_url()}")


@click.command("pull")
@click.pass_context
def pull_cmd(ctx: click.Context) -> None:
    """Download the edit weights of the work tree from the DVC remote."""
    repo = open_repo(ctx)
    n = repo.pull()
    click.echo(f"pulled {n} file(s) from {repo.storage.remote_url()}")
