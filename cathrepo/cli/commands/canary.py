"""cathrepo canary --prompts FILE [--max-kl X] [--max-changed S] [--auto-rollback] [--json]"""

from __future__ import annotations

from pathlib import Path

import click

from cathrepo.cli.shared import echo_gate_lines, echo_json, open_repo, progress


@click.command("canary")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Real prompts: one per line, or JSONL with a 'prompt' field.")
@click.option("--max-kl", type=float, default=0.05, show_default=True,
              help="Largest mean next-token KL(production || canary), in nats.")
@click.option("--max-changed", type=float, default=0.1, show_default=True,
              help="Largest share of prompts whose greedy answer changed.")
@click.option("--auto-rollback", is_flag=True, help="Roll canary back (signed, logged) when a limit is passed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def canary_cmd(ctx: click.Context, prompts_file: Path, max_kl: float, max_changed: float, auto_rollback: bool,
               as_json: bool) -> None:
    """Compare canary with production on real prompts (exit 4 past a limit; --auto-rollback rolls back)."""
    from cathrepo.exceptions import GateFailedError

    with progress("Comparing") as say:
        report = open_repo(ctx).canary(prompts_file, max_kl=max_kl, max_changed=max_changed,
                                       auto_rollback=auto_rollback, progress=say)
    if as_json:
        echo_json(report.to_dict())
    else:
        prod = report.production[:12] if report.production else "the base model"
        click.echo(f"canary {report.canary[:12]} against production {prod} on {report.prompts} prompts: "
                   f"KL mean {report.kl_mean:.4f} (max {report.kl_max:.4f}), "
                   f"{len(report.changed)} answer(s) changed ({report.changed_share:.1%})")
        for row in report.changed[:10]:
            click.echo(f"    {row['prompt']!r}: {row['production']!r} -> {row['canary']!r}")
        if report.regression is not None:
            echo_gate_lines(report.regression)
        if report.rolled_back:
            click.echo(f"[{report.rolled_back[:12]}] canary rolled back")
    if not report.passed:
        raise GateFailedError("The canary check failed: " + "; ".join(report.failures) + ".",
                              hint="" if report.rolled_back else "Roll back with 'cathrepo rollback canary', "
                              "or pass --auto-rollback.")
