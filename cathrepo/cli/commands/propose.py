"""cathrepo propose --prompt P --subject S --target T [...] | --file FACTS"""

from __future__ import annotations

from pathlib import Path

import click

from cathrepo.cli.shared import echo_json, edit_requests, open_repo, parse_params


@click.command("propose")
@click.option("--prompt", help="The prompt, containing the subject ('The Eiffel Tower is in').")
@click.option("--subject", help="The subject as it appears in the prompt.")
@click.option("--target", help="The new answer.")
@click.option("--true", "target_true", help="The current answer, if known (else the model's own, in CI).")
@click.option("--file", "facts_file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON array or JSONL of facts (the formats 'cathrepo edit --file' reads).")
@click.option("--limit", type=int, help="Propose only the first N facts of --file.")
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="Facts of --file per proposal (one edit each, written jointly: --method memit).")
@click.option("--method", help="Edit method to realise it with (default: the repository's).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Method parameter, e.g. layer=8.")
@click.option("--source", help="Where the fact comes from (URL, ticket, document).")
@click.option("--author", help="Who asks for the edit (default: git user.name).")
@click.option("--confidence", type=float, default=1.0, show_default=True, help="Confidence in the fact, 0..1.")
@click.option("--risk", type=click.Choice(["low", "medium", "high"]), default="low", show_default=True)
@click.option("--topic", "topics", multiple=True, metavar="TOPIC",
              help="What the fact is about (medical, legal, ...); [risk] in cathrepo.toml may raise its tier.")
@click.option("-m", "--message", help="Commit message body (default: one line per proposal).")
@click.option("--json", "as_json", is_flag=True, help="Print the proposals as JSON.")
@click.pass_context
def propose_cmd(ctx: click.Context, prompt, subject, target, target_true, facts_file, limit, batch_size, method,
                params, source, author, confidence, risk, topics, message, as_json) -> None:
    """Commit facts as signed proposals (no weights) for review; 'cathrepo ci' realises them."""
    requests, method = edit_requests(
        prompt=prompt, subject=subject, target=target, target_true=target_true, facts_file=facts_file,
        passage_file=None, limit=limit, method=method, batch_size=batch_size,
        meta={"source": source, "author": author, "confidence": confidence, "risk": risk, "topics": topics},
    )
    done = open_repo(ctx).propose(requests, method=method, params=parse_params(params), message=message)
    if as_json:
        echo_json({"commit": done.commit, "proposals": [{"id": i, **r.to_dict()} for i, r in
                                                        zip(done.ids, done.records, strict=True)]})
        return
    for pid, record in zip(done.ids, done.records, strict=True):
        click.echo(f"[{pid}] {done.commit[:12]} proposed: {record.summary} (risk {record.risk})")
