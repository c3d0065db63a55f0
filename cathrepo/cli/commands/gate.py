"""cathrepo gate [REV] [--json] [--report md|html]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import open_repo, progress


@click.command("gate")
@click.argument("rev", default="HEAD")
@click.option("--stage", type=click.Choice(["revision", "merge", "promote"]), default="revision", show_default=True,
              help="Which stage's gates of cathrepo.toml to run.")
@click.option("--gate", "gates", multiple=True, metavar="NAME", help="Run only these gates (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--report", "report_format", type=click.Choice(["md", "html"]), help="Print the report as Markdown or HTML.")
@click.pass_context
def gate_cmd(ctx: click.Context, rev: str, stage: str, gates: tuple[str, ...], as_json: bool,
             report_format: str | None) -> None:
    """Run the gates on a revision; exits with status 4 when any gate fails."""
    from cathrepo.exceptions import GateFailedError

    with progress(f"Gating {rev}") as say:
        report = open_repo(ctx).gate(rev, stage=stage, gates=list(gates) or None, progress=say)
    if as_json:
        click.echo(report.to_json())
    elif report_format == "md":
        click.echo(report.to_markdown(), nl=False)
    elif report_format == "html":
        click.echo(report.to_html(), nl=False)
    else:
        for result in report.results:
            line = f"  {result.summary()}" + (f"  ({result.detail})" if result.detail else "")
            click.secho(line, fg=None if result.passed else "red")
    if not report.passed:
        if as_json or report_format:
            ctx.exit(GateFailedError.exit_code)
        raise GateFailedError.from_report(report, rev)
