"""cathrepo revert EDIT [--no-gate] [--force]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import open_repo, progress


@click.command("revert")
@click.argument("edit")
@click.option("--no-gate", is_flag=True, help="Skip the revert-stage gates.")
@click.option("--force", is_flag=True, help="Commit even if the revert-stage gates fail.")
@click.pass_context
def revert_cmd(ctx: click.Context, edit: str, no_gate: bool, force: bool) -> None:
    """Remove an edit from the active set in a new signed commit (its files stay in history)."""
    with progress("Reverting") as say:
        outcome = open_repo(ctx).revert(edit, gate=not no_gate, force=force, progress=say)
    click.echo(f"[{outcome.commit[:12]}] reverted {outcome.edit_id}: {outcome.summary}")
    if outcome.report is not None:
        for result in outcome.report.results:
            click.echo(f"    {result.summary()}")
