"""cathrepo explain PROMPT [--rev REV] [--tenant T] [--all] [--max-new-tokens N] [--json]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo, progress


@click.command("explain")
@click.argument("prompt")
@click.option("--rev", default="HEAD", show_default=True, help="Revision to materialize.")
@click.option("--tenant", default=None, help="Apply only this tenant's edits ([tenants.<name>] in cathrepo.toml).")
@click.option("--all", "measure_all", is_flag=True, help="Measure every active edit (no screen).")
@click.option("--max-new-tokens", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def explain_cmd(ctx: click.Context, prompt: str, rev: str, tenant: str | None, measure_all: bool,
                max_new_tokens: int, as_json: bool) -> None:
    """The answer to PROMPT at REV, the active edits and which of them caused it: each edit's delta is
    removed alone and the change of the answer's log-probability measured (docs/explain.md)."""
    with progress("Explaining"):
        out = open_repo(ctx).explain(prompt, rev, tenant=tenant, max_new_tokens=max_new_tokens,
                                     screen=not measure_all)
    if as_json:
        echo_json(out.to_dict())
        return
    whose = f", tenant {out.tenant}" if out.tenant else ""
    click.echo(f"{out.prompt} {out.answer}")
    click.secho(f"({out.commit[:12]}{whose}; base model: {out.base_answer!r})", dim=True)
    cause = set(out.cause)
    for e in out.edits:
        origin = e.provenance
        signed = origin["signature"].get("signer") or origin["signature"]["status"]
        if e.status == "screened":
            effect = f"screened (activation change {e.screen['activation']:.3f})"
        else:
            effect = f"Δlogp {e.delta_logprob:+.3f}" + (f", without it: {e.answer_without!r}" if e.changes_answer else "")
        line = f"{'CAUSE ' if e.id in cause else '      '}{e.id[:12]}  {e.summary}  [{effect}]"
        click.secho(line, bold=e.id in cause)
        click.secho(f"        source {origin['source'] or '-'}, author {origin['author']}, risk {origin['risk']}, "
                    f"signed by {signed}, {len(origin['approvals'])} approval(s)", dim=True)
    if not out.edits:
        click.echo("No active edits.")
    elif not cause:
        click.echo("No single edit changes this answer.")
