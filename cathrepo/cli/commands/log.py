"""cathrepo log [REV] [--json] [-n N]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.command("log")
@click.argument("rev", default="HEAD")
@click.option("-n", "max_count", type=int, help="Show at most N commits.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def log_cmd(ctx: click.Context, rev: str, max_count: int | None, as_json: bool) -> None:
    """List the history: edits (active ones marked *), reverts and other commits."""
    entries = open_repo(ctx).log(rev, max_count=max_count)
    if as_json:
        echo_json([e.to_dict() for e in entries])
        return
    lines = []
    for e in entries:
        mark = "*" if e.active else " "
        label = f"{e.action:<6} {e.edit_id or '':<16}"
        gates = f"  [{e.gates}]" if e.gates else ""
        lines.append(f"{mark} {e.commit[:12]} {e.date[:19]} {label} {e.summary}{gates}")
    if lines:
        click.echo("\n".join(lines))  # one write: ten thousand commits print in milliseconds
