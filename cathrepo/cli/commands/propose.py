"""cathrepo propose --prompt P --subject S --target T [...] | --file FACTS"""

from __future__ import annotations

import click

from cathrepo.cli.fact_options import fact_options, provenance_options
from cathrepo.cli.shared import echo_json, edit_requests, open_repo, parse_params


@click.command("propose")
@fact_options(true_help="The current answer, if known (else the model's own, in CI).",
              file_help="JSON array or JSONL of facts (the formats 'cathrepo edit --file' reads).",
              limit_help="Propose only the first N facts of --file.")
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="Facts of --file per proposal (one edit each, written jointly: --method memit).")
@click.option("--method", help="Edit method to realise it with (default: the repository's).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Method parameter, e.g. layer=8.")
@provenance_options(author_help="Who asks for the edit (default: git user.name).")
@click.option("-m", "--message", help="Commit message body (default: one line per proposal).")
@click.option("--json", "as_json", is_flag=True, help="Print the proposals as JSON.")
@click.pass_context
def propose_cmd(ctx: click.Context, prompt, subject, target, target_true, facts_file, limit, batch_size, method,
                params, meta, message, as_json) -> None:
    """Commit facts as signed proposals (no weights) for review; 'cathrepo ci' realises them."""
    requests, method = edit_requests(
        prompt=prompt, subject=subject, target=target, target_true=target_true, facts_file=facts_file,
        passage_file=None, limit=limit, method=method, batch_size=batch_size, meta=meta,
    )
    done = open_repo(ctx).propose(requests, method=method, params=parse_params(params), message=message)
    if as_json:
        echo_json({"commit": done.commit, "proposals": [{"id": i, **r.to_dict()} for i, r in
                                                        zip(done.ids, done.records, strict=True)]})
        return
    for pid, record in zip(done.ids, done.records, strict=True):
        click.echo(f"[{pid}] {done.commit[:12]} proposed: {record.summary} (risk {record.risk})")
