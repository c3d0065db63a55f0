"""cathrepo consolidate [--strategy cat|svd:R|ties[:D]|dare[:P]|clip[:F]|prune[:F]] [--no-gate] [--force]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_gate_lines, open_repo, progress


@click.command("consolidate")
@click.option("--strategy", default="cat", show_default=True, metavar="SPEC",
              help="cat (exact: ranks add), svd:R (rank R per module), ties[:DENSITY], dare[:P], clip[:F] or "
                   "prune[:F] (the summed update held at F times each base weight's spectral norm, default 1; "
                   "its error is the share the restraint took).")
@click.option("--no-gate", is_flag=True, help="Skip the gates on the pack.")
@click.option("--force", is_flag=True, help="Use the pack even if its gates fail.")
@click.pass_context
def consolidate_cmd(ctx: click.Context, strategy: str, no_gate: bool, force: bool) -> None:
    """Fold every active edit into one pack applied in their place (gated; the edits stay revertible)."""
    with progress("Consolidating") as say:
        done = open_repo(ctx).consolidate(strategy=strategy, gate=not no_gate, force=force, progress=say)
    record = done.pack.record
    click.echo(f"[{done.commit[:12]}] pack {done.pack.id}: {len(record.edits)} edits by {record.strategy}, "
               f"rank {max(record.ranks.values(), default=0)} at most, largest relative error {record.max_error:.3g}")
    if done.report is not None:
        echo_gate_lines(done.report)
