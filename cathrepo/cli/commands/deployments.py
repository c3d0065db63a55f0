"""cathrepo deployments [ENV] [--rev REV] [--json]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.command("deployments")
@click.argument("env", required=False)
@click.option("--rev", default="HEAD", show_default=True, help="Read the log as committed at this revision.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def deployments_cmd(ctx: click.Context, env: str | None, rev: str, as_json: bool) -> None:
    """The verified deployment log, oldest first, and the commit each environment serves."""
    log = open_repo(ctx).deployments(env, rev)
    if as_json:
        echo_json(log.to_dict())
        return
    if not log.entries:
        click.echo("Nothing was promoted" + (f" to {env}." if env else "."))
        return
    rows = [("env", "action", "commit", "when (UTC)", "by", "gates", "reason")]
    rows += [(e.env, e.action, e.commit[:12], e.time[:19], e.by, str(e.gates.get("verdict", "")),
              e.reason.splitlines()[0] if e.reason else "") for e in log.entries]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[6]]).rstrip()
             for row in rows]
    lines += ["", "current:"] + [f"  {name.ljust(widths[0])}  {sha[:12]}" for name, sha in log.current.items()]
    click.echo("\n".join(lines))
