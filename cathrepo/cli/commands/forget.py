"""cathrepo forget --prompt P --subject S --answer A [--inverse Q ...] --mode MODE [--replacement R] | --file FACTS"""

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

MODES = ("negate", "erase", "suppress", "replace")


@click.command("forget")
@fact_options(answer="--answer", answer_help="The answer the model must no longer give.", true_help=None,
              file_help="Facts as `cathrepo edit --file` reads them; each record's true target is the answer to forget.",
              limit_help="Forget only the first N facts of --file.")
@click.option("--mode", type=click.Choice(MODES), required=True, help="How to forget (see README, Forgetting).")
@click.option("--replacement", help="With --mode replace: the new answer.")
@click.option("--inverse", "inverse", multiple=True, metavar="PROMPT",
              help="A prompt reading the relation backwards, whose answer is --subject (\"Paris is home to the\"): "
                   "the subject must leave its top k too (repeatable; in --file records: inverse_prompts).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Mode parameter, e.g. layer=8.")
@click.option("--corpus", type=click.Path(dir_okay=False, path_type=Path), help="Text for covariance statistics.")
@provenance_options(source_help="Where the request comes from (URL, ticket, document).",
                    author_help="Who asked for the forget (default: git user.name).", confidence=False)
@click.option("--dry-run", is_flag=True, help="Compute and gate, but commit nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
@click.pass_context
def forget_cmd(ctx: click.Context, prompt, subject, answer, facts_file, limit, mode, replacement, inverse, params,
               corpus, meta, dry_run, as_json) -> None:
    """Forget a fact (or every fact of a file) as a gated, signed, revertible edit."""
    from cathrepo.exceptions import InvalidInputError
    from cathrepo.facts.schema import EditRequest, Fact

    if facts_file and (prompt or subject or answer or inverse):
        raise InvalidInputError("Give --file or --prompt/--subject/--answer, not both.",
                                hint="In --file, give each record's inverse prompts as inverse_prompts.")
    if facts_file:  # the verb reads each record's true target as the answer
        requests, _ = edit_requests(prompt=None, subject=None, target=None, target_true=None, facts_file=facts_file,
                                    passage_file=None, limit=limit, method=mode, meta=meta)
    elif prompt and subject and answer:
        requests = [EditRequest(Fact(prompt, subject, answer, action="forget", inverse_prompts=inverse), **meta)]
    else:
        raise InvalidInputError("Nothing to forget.", hint="Pass --prompt, --subject and --answer, or --file.")
    repo = open_repo(ctx)
    done: list = []

    def report(outcome) -> None:
        done.append(outcome)
        if not as_json:
            head = f"[{outcome.edit_id}] {outcome.commit[:12]}" if outcome.commit else "[dry run]"
            scale = f", scale {outcome.params.scale:g}" if mode == "negate" else ""
            click.echo(f"{head} forget {outcome.fact.prompt} -> {outcome.fact.target_new} ({mode}{scale})")
            echo_gate_lines(outcome.report)

    try:
        with progress("Forgetting") as say:
            repo.forget(requests, mode=mode, replacement=replacement, params=parse_params(params), corpus=corpus,
                        dry_run=dry_run, progress=say, on_outcome=report)
    except GateFailedError as exc:
        fact = getattr(exc, "fact", None) or requests[min(len(done), len(requests) - 1)].fact
        if as_json:
            echo_json([outcome_entry(o) for o in done] + [refused_entry(fact, exc)])
        else:
            echo_refusal(fact, exc.results)
        raise
    if as_json:
        echo_json([{**outcome_entry(o), "mode": mode} for o in done])
