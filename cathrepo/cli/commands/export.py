"""cathrepo export --format peft|merged OUT [--rank R] [--rev REV] [--force] [--json]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo, progress


@click.command("export")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["peft", "merged"]), default="peft", show_default=True,
              help="peft: one LoRA adapter directory; merged: a Hugging Face model with the edits merged in.")
@click.option("--rank", type=click.IntRange(1), default=None,
              help="PEFT only: compact every module to rank R (svd:R) for engines with a rank limit.")
@click.option("--rev", default="HEAD", show_default=True, help="Revision whose active set is exported.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def export_cmd(ctx: click.Context, out: str, fmt: str, rank: int | None, rev: str, force: bool,
               as_json: bool) -> None:
    """Export the verified active set at REV as a PEFT adapter or a merged model directory."""
    from pathlib import Path


    with progress("Exporting"):
        done = open_repo(ctx).export(Path(out), fmt=fmt, rev=rev, rank=rank, force=force)
    if as_json:
        echo_json({"out": str(done.out), "rank": done.rank, **done.manifest()})
        return
    what = f"PEFT adapter, rank {done.rank} at most ({done.strategy})" if fmt == "peft" else "merged model"
    click.echo(f"{done.out}: {what} of {len(done.edits)} edit(s) at {done.commit[:12]}, "
               f"base {done.base_model['hub_id']}")
    if done.strategy.startswith("svd"):
        click.echo(f"    largest relative truncation error {done.max_error:.3g}")
