"""cathrepo edit --prompt P --subject S --target T [...] | --file FACTS | --passage FILE"""

from __future__ import annotations

from pathlib import Path

import click

from cathrepo.cli.fact_options import fact_options, provenance_options
from cathrepo.cli.shared import (
    echo_gate_lines,
    echo_json,
    echo_refusal,
    edit_requests,
    open_repo,
    outcome_entry,
    parse_params,
    progress,
    refused_entry,
)
from cathrepo.exceptions import GateFailedError
from cathrepo.pipeline import attempt_label, attempt_refusal


@click.command("edit")
@fact_options()
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="Facts of --file per edit: each batch is one signed commit, written jointly (--method memit).")
@click.option("--passage", "passage_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A free-text passage to internalize as one edit (default method: auto -> lora).")
@click.option("--method", help="Edit method (default from cathrepo.toml, normally rome).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Method parameter, e.g. layer=8.")
@click.option("--corpus", type=click.Path(dir_okay=False, path_type=Path), help="Text for covariance statistics.")
@provenance_options()
@click.option("--dry-run", is_flag=True, help="Compute and gate, but commit nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
@click.pass_context
def edit_cmd(ctx: click.Context, prompt, subject, target, target_true, facts_file, limit, batch_size, passage_file,
             method, params, corpus, meta, dry_run, as_json) -> None:
    """Compute, gate and commit an edit (one fact, every fact of a file, or a passage)."""
    requests, method = edit_requests(
        prompt=prompt, subject=subject, target=target, target_true=target_true, facts_file=facts_file,
        passage_file=passage_file, limit=limit, method=method, batch_size=batch_size, meta=meta,
    )
    repo = open_repo(ctx)
    done: list = []

    def report(outcome) -> None:
        done.append(outcome)
        if not as_json:
            head = f"[{outcome.edit_id}] {outcome.commit[:12]}" if outcome.commit else "[dry run]"
            what = outcome.record.summary if outcome.record else f"{outcome.fact.prompt} -> {outcome.fact.target_new}"
            click.echo(f"{head} {what} (was: {outcome.fact.target_true or '?'})")
            if len(outcome.attempts) > 1:
                refused = "; ".join(attempt_refusal(a) for a in outcome.attempts[:-1])
                click.echo(f"    on attempt {len(outcome.attempts)}, {attempt_label(outcome.attempts[-1])}; "
                           f"refused before: {refused}")
            echo_gate_lines(outcome.report)

    try:
        with progress("Editing") as say:
            repo.edit(requests, method=method, params=parse_params(params), corpus=corpus, dry_run=dry_run,
                      progress=say, on_outcome=report)
    except GateFailedError as exc:  # the refused fact is the one after the last reported outcome
        fact = getattr(exc, "fact", None) or requests[min(len(done), len(requests) - 1)].fact
        if as_json:
            echo_json([outcome_entry(o) for o in done] + [refused_entry(fact, exc)])
        else:
            echo_refusal(fact, exc.results)
        raise  # cli.main prints the red line and exits with the refusal's status (4)
    if as_json:
        echo_json([outcome_entry(o) for o in done])
