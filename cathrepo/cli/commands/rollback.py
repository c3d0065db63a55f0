"""cathrepo rollback ENV [-m REASON] [--json]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.command("rollback")
@click.argument("env")
@click.option("-m", "--reason", default="", help="Why (recorded in the deployment log).")
@click.option("--json", "as_json", is_flag=True, help="Print the signed entry as JSON.")
@click.pass_context
def rollback_cmd(ctx: click.Context, env: str, reason: str, as_json: bool) -> None:
    """Return ENV to the revision it served before its latest promotion (again: one step further back)."""
    outcome = open_repo(ctx).rollback(env, reason)
    if as_json:
        echo_json(outcome.to_dict())
        return
    entry = outcome.entry
    was = entry.previous[:12] if entry.previous else "nothing"
    click.echo(f"[{outcome.commit[:12]}] {env} rolled back to {entry.commit[:12]} (was: {was})")
