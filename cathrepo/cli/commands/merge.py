"""cathrepo merge BRANCH [--ours | --theirs] [--strategy S] [...] | cathrepo resolve BRANCH --keep EDIT [...]"""

from __future__ import annotations

import click

from cathrepo.cli.shared import echo_gate_lines, echo_json, open_repo, progress


def _merge(ctx: click.Context, branch: str, *, resolution: str | None, keep: tuple[str, ...], strategy: str | None,
           no_gate: bool, force: bool, as_json: bool) -> None:
    from cathrepo.exceptions import MergeConflictError

    try:
        with progress("Merging") as say:
            done = open_repo(ctx).merge(branch, resolution=resolution, keep=keep, strategy=strategy,
                                        gate=not no_gate, force=force, progress=say)
    except MergeConflictError as exc:
        for c in exc.conflicts:
            click.secho(f"[conflict] {getattr(c, 'kind', '?')}: {getattr(c, 'message', c)}", fg="red", err=True)
        raise
    if as_json:
        echo_json({"commit": done.commit, "active": list(done.active), "added": list(done.added),
                   "removed": list(done.removed), "resolution": done.resolution,
                   "conflicts": [vars(c) for c in done.settled],
                   "gates": done.report.to_dict() if done.report else None,
                   "pack": done.extra.get("pack"), "pack_refused": done.extra.get("pack_refused")})
        return
    click.echo(f"[{done.commit[:12]}] merged '{branch}': {len(done.active)} active edit(s), "
               f"{len(done.added)} added, {len(done.removed)} removed")
    for c in done.settled:
        click.echo(f"    settled {c.kind}: {c.subject} ({c.ours} / {c.theirs})")
    if done.report is not None:
        echo_gate_lines(done.report)
    if "pack" in done.extra:
        click.echo(f"[{done.extra['pack_commit'][:12]}] folded into pack {done.extra['pack']} ({strategy})")
    elif "pack_refused" in done.extra:
        click.secho(f"not folded: {done.extra['pack_refused']}", fg="yellow")


_GATE_OPTIONS = [
    click.option("--no-gate", is_flag=True, help="Skip the merge-stage gates."),
    click.option("--force", is_flag=True, help="Commit even if the merge-stage gates fail."),
    click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON."),
]


def _gate_options(fn):  # type: ignore[no-untyped-def]
    for option in reversed(_GATE_OPTIONS):
        fn = option(fn)
    return fn


@click.command("merge")
@click.argument("branch")
@click.option("--ours", "resolution", flag_value="ours", help="Settle every conflict in favour of this branch.")
@click.option("--theirs", "resolution", flag_value="theirs", help="Settle every conflict in favour of BRANCH.")
@click.option("--strategy", metavar="SPEC", help="Then fold the active edits into one pack: cat, svd:R, ties[:D], "
              "dare[:P], clip[:F], prune[:F] (gated; refused packs are not written).")
@_gate_options
@click.pass_context
def merge_cmd(ctx: click.Context, branch: str, resolution: str | None, strategy: str | None, no_gate: bool,
              force: bool, as_json: bool) -> None:
    """Merge BRANCH's edits into this branch in one signed merge commit, after the merge gates."""
    _merge(ctx, branch, resolution=resolution, keep=(), strategy=strategy, no_gate=no_gate, force=force,
           as_json=as_json)


@click.command("resolve")
@click.argument("branch")
@click.option("--keep", "keep", multiple=True, required=True, metavar="EDIT",
              help="The edit that wins its conflict (repeat for each conflict).")
@click.option("--ours", "resolution", flag_value="ours", help="Conflicts no --keep names: this branch wins.")
@click.option("--theirs", "resolution", flag_value="theirs", help="Conflicts no --keep names: BRANCH wins.")
@_gate_options
@click.pass_context
def resolve_cmd(ctx: click.Context, branch: str, keep: tuple[str, ...], resolution: str | None, no_gate: bool,
                force: bool, as_json: bool) -> None:
    """Merge BRANCH, settling each conflict by the edit named with --keep."""
    _merge(ctx, branch, resolution=resolution, keep=keep, strategy=None, no_gate=no_gate, force=force,
           as_json=as_json)
