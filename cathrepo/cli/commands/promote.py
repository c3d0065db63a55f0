"""cathrepo promote REV --to ENV [-m REASON] [--no-gate] [--force] [--json]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_gate_lines, echo_json, open_repo, progress


@click.command("promote")
@click.argument("rev")
@click.option("--to", "env", required=True, metavar="ENV", help="The environment: canary, production, ...")
@click.option("-m", "--reason", default="", help="Why (recorded in the deployment log).")
@click.option("--no-gate", is_flag=True, help="Skip the promote-stage gates (the log records that none ran).")
@click.option("--force", is_flag=True, help="Promote even if the promote-stage gates fail (recorded as forced).")
@click.option("--json", "as_json", is_flag=True, help="Print the signed entry as JSON.")
@click.pass_context
def promote_cmd(ctx: click.Context, rev: str, env: str, reason: str, no_gate: bool, force: bool,
                as_json: bool) -> None:
    """Record that ENV serves REV from now on: a signed line in deployments.jsonl, in a signed commit."""
    with progress(f"Promoting {rev} to {env}") as say:
        outcome = open_repo(ctx).promote(rev, env, reason, gate=not no_gate, force=force, progress=say)
    if as_json:
        echo_json(outcome.to_dict())
        return
    entry = outcome.entry
    was = entry.previous[:12] if entry.previous else "nothing"
    click.echo(f"[{outcome.commit[:12]}] {env} now serves {entry.commit[:12]} (was: {was}); "
               f"gates {entry.gates.get('verdict')}")
    if outcome.report is not None:
        echo_gate_lines(outcome.report)
