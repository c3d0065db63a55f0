"""cathrepo generate PROMPT [--rev REV] [--max-new-tokens N]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo, progress


@click.command("generate")
@click.argument("prompt")
@click.option("--rev", default="HEAD", show_default=True, help="Revision to materialize.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def generate_cmd(ctx: click.Context, prompt: str, rev: str, max_new_tokens: int, as_json: bool) -> None:
    """Greedy generation from the base model plus the (verified) active edits at REV."""
    with progress("Materializing"):
        out = open_repo(ctx).generate(prompt, rev, max_new_tokens=max_new_tokens)
    if as_json:
        echo_json({"prompt": out.prompt, "text": out.text, "rev": out.rev, "commit": out.commit,
                   "edits": list(out.edits)})
        return
    click.echo(f"{out.prompt} {out.text}")
    click.secho(f"({out.commit[:12]}, {len(out.edits)} active edit(s))", dim=True, err=True)
