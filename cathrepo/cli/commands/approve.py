"""cathrepo approve EDIT [--key PATH] [-m NOTE] [--json]"""

from __future__ import annotations

from pathlib import Path

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.command("approve")
@click.argument("edit")
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Your private signing key (listed in allowed_signers); default: the repository's (user.signingkey).")
@click.option("-m", "--note", default="", help="Why you approve (the commit message body).")
@click.option("--json", "as_json", is_flag=True, help="Print the approval and the edit's status as JSON.")
@click.pass_context
def approve_cmd(ctx: click.Context, edit: str, key_path: Path | None, note: str, as_json: bool) -> None:
    """Approve EDIT: a signature over its record in a signed commit (high-risk edits need approvals to be
    merged or promoted; an author cannot approve their own edit)."""
    done = open_repo(ctx).approve(edit, key_path=key_path, note=note)
    if as_json:
        echo_json({"commit": done.commit, "approval": done.approval.to_dict(), "status": done.status.to_dict()})
        return
    status = done.status
    click.echo(f"[{done.commit[:12]}] {done.approval.principal} approved edit {status.line()}")
    if not status.ok:
        click.echo(f"    {status.required - len(status.approvers)} more approval(s) needed before it is merged or promoted")
