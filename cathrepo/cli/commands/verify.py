"""cathrepo verify [REV] [--full] [--json]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo
from cathrepo.exceptions import VerificationError


@click.command("verify")
@click.argument("rev", default="HEAD")
@click.option("--full", is_flag=True, help="Check again what this clone verified before (by default only "
                                         "each edit's weights are, the rest is known by its git ids).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def verify_cmd(ctx: click.Context, rev: str, full: bool, as_json: bool) -> None:
    """Check every commit signature, edit signature and file hash up to REV."""
    report = open_repo(ctx).verify(rev, full=full)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(f"checked {report.commits} commit(s), {report.edits} edit(s), {report.files} file(s), "
                   f"{report.deployments} deployment(s) at {report.commit[:12]}")
        for issue in report.issues:
            click.secho(f"  {issue}", fg="red", err=True)
    if not report.ok:
        raise VerificationError(f"{len(report.issues)} problem(s) found; first: {report.issues[0]}.")
    if not as_json:
        click.echo("OK: every signature and hash verifies.")
