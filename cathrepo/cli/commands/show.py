"""cathrepo show EDIT [--rev REV] [--json]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.command("show")
@click.argument("edit")
@click.option("--rev", default="HEAD", help="Revision to read the edit at.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@click.pass_context
def show_cmd(ctx: click.Context, edit: str, rev: str, as_json: bool) -> None:
    """Show one edit's record: fact, method, site, provenance, gates."""
    shown = open_repo(ctx).show(edit, rev)
    if as_json:
        echo_json(shown)
        return
    r = shown["record"]
    fact = r["fact"]
    click.echo(f"edit {shown['id']} ({'active' if shown['active'] else 'not active'})")
    click.echo(f"commit     {shown['commit']}")
    click.echo(f"fact       {fact['prompt']} -> {fact['target_new']} (was: {fact.get('target_true') or '?'})")
    click.echo(f"method     {r['method']} at {', '.join(r['site'].get('modules', []))}")
    click.echo(f"author     {r['author']}   created {r['created']}   risk {r['risk']}   "
               f"confidence {r['confidence']}")
    click.echo(f"source     {r['source'] or '-'}" + (f"   topics {', '.join(r['topics'])}" if r.get("topics") else ""))
    a = shown["approvals"]
    click.echo(f"approvals  {len(a['approvers'])} of {a['required']} needed (tier {a['tier']})"
               + ("" if a["ok"] else f": run 'cathrepo approve {shown['id']}'"))
    for ap in a["approvals"]:
        click.echo(f"approved   {ap['principal']} ({ap['fingerprint']}) at {ap['time']} in {(ap['commit'] or '?')[:12]}")
    for issue in a["issues"]:
        click.secho(f"rejected   {issue}", fg="red")
    for g in r["gates"].get("results", []):
        status = "skip" if g.get("skipped") else ("pass" if g["passed"] else "FAIL")
        metrics = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in g["metrics"].items())
        click.echo(f"gate       {g['name']:<13} {status} {metrics}")
    for name, digest in sorted(r["files"].items()):
        click.echo(f"file       {name:<34} sha256 {digest[:16]}…")
