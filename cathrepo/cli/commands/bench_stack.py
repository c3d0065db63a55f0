"""cathrepo bench stack --state DIR --at N [--restrain clip|prune] (the options of the saved run)"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cathrepo.cli.run_options import FILE, run_options
from cathrepo.cli.shared import parse_params, progress

#: What is measured of each stack, in the order printed.
SHOWN = ("es", "ps", "ns", "ns_plus", "gen_success", "gen_chat", "retention", "norm_growth", "perplexity_after")


@click.command("stack")
@run_options(saved=True)
@click.option("--known", type=FILE, help="Known facts for neighbours and retention (default: shipped).")
@click.option("--state", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The saved run's --state directory.")
@click.option("--at", "at", type=click.IntRange(min=1), multiple=True, required=True, metavar="N",
              help="Measure the stack of the first N edits (repeatable).")
@click.option("--restrain", "rules", type=click.Choice(["clip", "prune"]), multiple=True,
              help="Also measure the stack with this restraint (repeatable; default: clip).")
@click.option("--factor", type=float, default=1.0, show_default=True,
              help="The restraint's bound, in multiples of the base weight's spectral norm.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Score every k-th edited record (retention and perplexity are always whole).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
def stack_cmd(data: Path, n: int, method: str, edit_batch: int, params: tuple[str, ...], skip: int,
              model: str | None, corpus: Path | None, known: Path | None, state: Path, at: tuple[int, ...],
              rules: tuple[str, ...], factor: float, every: int, json_out: Path | None) -> None:
    """Measure a saved sequential run's stack as it is and restrained at the base weights' spectral norm."""
    from cathrepo.bench.edits import EditBenchConfig
    from cathrepo.bench.stack import StackBenchConfig, bench_stack

    run = EditBenchConfig(data=data, n=n, method=method, sequential=True, edit_batch=edit_batch, model=model,
                          params=parse_params(params), corpus=corpus, skip=skip, known=known, mmlu=False, state=state)
    config = StackBenchConfig(run=run, at=at, rules=rules or ("clip",), factor=factor, every=every)
    with progress("Measuring") as say:
        out = bench_stack(config, lambda stage, done, total: say(f"{stage} {done}/{total}"))
    for row in out["rows"]:
        for label in ("stack", *config.rules):
            got = row[label]
            click.echo(f"{row['edits']} edits, {label:<6} ({row['records']} records): " + ", ".join(
                f"{k} {got[k]:.3f}" if isinstance(got.get(k), float) else f"{k} -" for k in SHOWN))
    if json_out:
        json_out.write_text(json.dumps(out, indent=2) + "\n")
        click.echo(f"wrote {json_out}")
