"""cathrepo generate PROMPT [--rev REV] [--tenant T] [--max-new-tokens N]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo, progress


@click.command("generate")
@click.argument("prompt")
@click.option("--rev", default="HEAD", show_default=True, help="Revision to materialize.")
@click.option("--tenant", default=None, help="Apply only this tenant's edits ([tenants.<name>] in cathrepo.toml).")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def generate_cmd(ctx: click.Context, prompt: str, rev: str, tenant: str | None, max_new_tokens: int,
                 as_json: bool) -> None:
    """Greedy generation from the base model plus the (verified) active edits at REV (a tenant's share)."""
    with progress("Materializing"):
        out = open_repo(ctx).generate(prompt, rev, max_new_tokens=max_new_tokens, tenant=tenant)
    if as_json:
        echo_json({"prompt": out.prompt, "text": out.text, "rev": out.rev, "commit": out.commit,
                   "edits": list(out.edits), "tenant": out.tenant})
        return
    click.echo(f"{out.prompt} {out.text}")
    whose = f", tenant {out.tenant}" if out.tenant else ""
    click.secho(f"({out.commit[:12]}, {len(out.edits)} active edit(s){whose})", dim=True, err=True)
