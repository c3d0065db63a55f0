"""cathrepo log [REV] [--json] [-n N] [--metrics]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_json, open_repo


@click.command("log")
@click.argument("rev", default="HEAD")
@click.option("-n", "max_count", type=int, help="Show at most N commits.")
@click.option("--metrics", is_flag=True,
              help="Show what each commit's gates recorded: retention of known facts, held-out perplexity "
                   "(its growth over the stack before) and the largest weight-norm growth.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def log_cmd(ctx: click.Context, rev: str, max_count: int | None, metrics: bool, as_json: bool) -> None:
    """List the history: edits (active ones marked *), reverts and other commits."""
    entries = open_repo(ctx).log(rev, max_count=max_count, metrics=metrics)
    if as_json:
        echo_json([e.to_dict() for e in entries])
        return
    lines = []
    for e in entries:
        mark = "*" if e.active else " "
        label = f"{e.action:<6} {e.edit_id or '':<16}"
        gates = f"  [{e.gates}]" if e.gates else ""
        lines.append(f"{mark} {e.commit[:12]} {e.date[:19]} {label} {e.summary}{gates}{_numbers(e.metrics)}")
    if lines:
        click.echo("\n".join(lines))  # one write: ten thousand commits print in milliseconds


def _numbers(m: dict[str, float]) -> str:
    """``  retention 0.982  ppl 25.72 (+0.4%)  norm +1.2%``: the parts the commit's gates measured."""
    parts = []
    if "retention" in m:
        parts.append(f"retention {m['retention']:.3f}")
    if "perplexity" in m:
        growth = f" ({m['perplexity_growth']:+.1%})" if "perplexity_growth" in m else ""
        parts.append(f"ppl {m['perplexity']:.2f}{growth}")
    if "norm_growth" in m:
        parts.append(f"norm {m['norm_growth']:+.1%}")
    return "".join(f"  {p}" for p in parts)
