"""cathrepo ci [--base main] [--head REV] [--commit] [--key PATH] [--json] [--summary FILE]"""

from __future__ import annotations

from pathlib import Path

import click

from cathrepo.cli.shared import echo_json, open_repo, progress


@click.command("ci")
@click.option("--base", default="main", show_default=True, help="The branch the edits are to merge into.")
@click.option("--head", default="HEAD", show_default=True,
              help="The branch under test (the pre-merge-commit hook passes MERGE_HEAD).")
@click.option("--commit", is_flag=True, help="Commit each realised edit that passes (signed by --key).")
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The CI's private signing key (listed in allowed_signers); default: the repository's.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of Markdown.")
@click.option("--summary", "summary", type=click.Path(dir_okay=False, path_type=Path),
              help="Also append the Markdown report to FILE (a CI job summary: $GITHUB_STEP_SUMMARY).")
@click.pass_context
def ci_cmd(ctx: click.Context, base: str, head: str, commit: bool, key_path: Path | None, as_json: bool,
           summary: Path | None) -> None:
    """Verify a branch, realise its proposals and gate its merge into --base (exit 4 if anything fails, 9 if
    only approvals are missing)."""
    from cathrepo.cli.ci_report import markdown
    from cathrepo.exceptions import GateFailedError

    with progress("CI") as say:
        report = open_repo(ctx).ci(base=base, head=head, commit=commit, key_path=key_path, progress=say)
    text = markdown(report)
    if summary is not None:
        with summary.open("a", encoding="utf-8") as out:
            out.write(text)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(text, nl=False)
    if report.gates_passed and not report.approved:
        from cathrepo.exceptions import ApprovalRequiredError

        missing = [a for a in report.approvals if not a.ok]
        raise ApprovalRequiredError(
            f"cathrepo ci: the branch needs approvals before it merges into {base}: "
            + "; ".join(a.line() for a in missing) + ".", missing=missing,
            hint="An approver in allowed_signers other than the author runs 'cathrepo approve EDIT' on the branch.")
    if not report.passed:
        raise GateFailedError(f"cathrepo ci: the branch does not pass into {base}.",
                              hint="See the report above for the verification issue or the gate that refused.")
