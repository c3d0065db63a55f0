"""cathrepo branch [NAME [START]] | cathrepo checkout [-b] NAME"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.command("branch")
@click.argument("name", required=False)
@click.argument("start", required=False, default="HEAD")
@click.option("--json", "as_json", is_flag=True, help="Print the branches as JSON.")
@click.pass_context
def branch_cmd(ctx: click.Context, name: str | None, start: str, as_json: bool) -> None:
    """List the branches of edits (* marks the current one), or create NAME at START."""
    repo = open_repo(ctx)
    if name:
        info = repo.create_branch(name, start)
        click.echo(f"Created branch '{info.name}' at {info.commit[:12]} ({info.active} active edit(s)).")
        return
    rows = repo.branches()
    if as_json:
        echo_json([vars(b) for b in rows])
        return
    for b in rows:
        click.echo(f"{'*' if b.current else ' '} {b.name:<24} {b.commit[:12]}  {b.active} active edit(s)")


@click.command("checkout")
@click.argument("name")
@click.option("-b", "create", is_flag=True, help="Create the branch at HEAD first.")
@click.pass_context
def checkout_cmd(ctx: click.Context, name: str, create: bool) -> None:
    """Switch to branch NAME of edits."""
    info = open_repo(ctx).checkout(name, create=create)
    click.echo(f"Switched to branch '{info.name}' ({info.commit[:12]}, {info.active} active edit(s)).")
