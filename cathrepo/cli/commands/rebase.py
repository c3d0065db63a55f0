"""cathrepo rebase --onto-base MODEL [--branch NAME] [--json]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo, progress


@click.command("rebase")
@click.option("--onto-base", "source", required=True, metavar="MODEL",
              help="The new base model: a local directory, a hub id or 'embedded:<key>'.")
@click.option("--branch", help="The branch to carry the edits on (default: rebase/<sha256 prefix>).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def rebase_cmd(ctx: click.Context, source: str, branch: str | None, as_json: bool) -> None:
    """Recompute every active edit on a new base model, on a new branch; report those that no longer hold."""
    from cathrepo.exceptions import GateFailedError

    with progress("Rebasing") as say:
        done = open_repo(ctx).rebase_onto_base(source, branch=branch, progress=say)
    if as_json:
        echo_json(done.to_dict())
    else:
        click.echo(f"On branch '{done.branch}', base {done.base['name']} ({done.base['sha256'][:12]}): "
                   f"{len(done.carried)} edit(s) carried, {len(done.refused)} no longer hold")
        for row in done.carried:
            click.echo(f"    {row['edit']} -> {row['now']} [{row['commit'][:12]}]")
        for row in done.refused:
            click.secho(f"    {row['edit']} refused: {row['summary']} ({'; '.join(row['failed'])})", fg="red")
    if done.refused:
        raise GateFailedError(f"{len(done.refused)} edit(s) do not hold on the new base; they are not carried.",
                              hint=f"Review branch '{done.branch}' before merging it.")
