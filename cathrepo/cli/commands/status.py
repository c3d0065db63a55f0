"""cathrepo status [--json]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show the base model, the active edits, uncommitted changes and storage state."""
    s = open_repo(ctx).status()
    if as_json:
        echo_json(s)
        return
    base = s["base"]
    click.echo(f"repository {s['root']} on {s['branch']} at {(s['head'] or '')[:12]}")
    ok = "ok" if base["ok"] else f"MISMATCH: {base.get('problem')}"
    click.echo(f"base model {base['name']} ({base['family']}) sha256 {base['sha256'][:12]}… {ok}")
    click.echo(f"active edits: {len(s['active'])}")
    for e in s["active"]:
        click.echo(f"  {e['id']}  {e['summary']}")
    stack = s["stack"]
    if stack.get("restrain"):
        click.echo(f"stack applied restrained ({stack['restrain']} at {stack.get('factor', 1.0):g}x each base "
                   "weight's spectral norm)" + (f": {stack['problem']}" if stack.get("problem") else ""))
        for module, m in (stack.get("modules") or {}).items():
            click.echo(f"  {module}: largest singular value {m['top']:.3g}, bound {m['bound']:.3g}, "
                       f"{m['above']} direction(s) held")
    if s["changes"]:
        click.echo("uncommitted changes:")
        for line in s["changes"]:
            click.echo(f"  {line}")
    storage = s["storage"]
    if storage.get("problem"):
        click.echo(f"storage: {storage['problem']}")
    else:
        click.echo(f"storage remote {storage.get('remote')}: {len(storage.get('not_pushed') or [])} not pushed, "
                   f"{len(storage.get('not_in_cache') or [])} missing locally")
