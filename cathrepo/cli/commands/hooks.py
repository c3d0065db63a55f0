"""cathrepo hooks install [--force] | uninstall | list [--json] | run NAME [ARGS...]"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from cathrepo.cli.shared import echo_json, open_repo

if TYPE_CHECKING:
    from cathrepo.repo.hooks import HookState

_WORDS = {"current": "installed", "outdated": "installed, outdated (run 'cathrepo hooks install')",
          "foreign": "not cathrepo's (left alone; 'cathrepo hooks install --force' replaces it)",
          "missing": "not installed"}


@click.group("hooks")
def hooks_group() -> None:
    """cathrepo's git hooks: pre-commit checks what is staged (no keys, no weights outside DVC, every
    staged edit verifies), pre-push the commits being pushed, pre-merge-commit the merge result."""


def _show(states: list[HookState], as_json: bool = False) -> None:
    if as_json:
        echo_json([s.to_dict() for s in states])
        return
    for s in states:
        runs = f"  [{s.python}]" if s.python and s.state in ("current", "outdated") else ""
        click.echo(f"{s.name:<17} {_WORDS[s.state]}  {s.path}{runs}")


@hooks_group.command("install")
@click.option("--force", is_flag=True, help="Replace hooks that are not cathrepo's (each is kept as "
                                            "<name>.pre-cathrepo and restored by uninstall).")
@click.pass_context
def install_cmd(ctx: click.Context, force: bool) -> None:
    """Install the hooks where git runs them (core.hooksPath if set), run by this Python."""
    _show(open_repo(ctx).hooks(install=True, force=force))


@hooks_group.command("uninstall")
@click.pass_context
def uninstall_cmd(ctx: click.Context) -> None:
    """Remove cathrepo's hooks; hooks that are not cathrepo's are left alone."""
    _show(open_repo(ctx).hooks(uninstall=True))


@hooks_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show which hooks are installed and whether each is this cathrepo's current one."""
    _show(open_repo(ctx).hooks(), as_json)


@hooks_group.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("name", type=click.Choice(["pre-commit", "pre-push", "pre-merge-commit"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run_cmd(ctx: click.Context, name: str, args: tuple[str, ...]) -> None:
    """What git runs: print each problem as 'path: problem' and exit 1, or nothing and exit 0."""
    from cathrepo.exceptions import NotARepositoryError

    try:
        repo = open_repo(ctx)
    except NotARepositoryError:  # a core.hooksPath shared with other repositories: not ours to check
        click.echo(f"cathrepo hooks: {name} skipped (not a cathrepo repository).", err=True)
        return
    if name == "pre-push":
        issues = repo.check_push(sys.stdin.read())
    else:
        issues = repo.check_staged()
    for issue in issues:
        click.echo(str(issue), err=True)
    if issues:
        ctx.exit(1)
    if name == "pre-merge-commit":
        _merge_gates(ctx, repo.git.current_branch())


def _merge_gates(ctx: click.Context, branch: str | None) -> None:
    """The merge gates of a plain ``git merge``: ``cathrepo ci --base <this branch> --head <the branch
    being merged>``. git writes no MERGE_HEAD before this hook runs; what is being merged is named in
    ``GIT_REFLOG_ACTION`` ("merge side"), which git sets for the hook. The hook's one tie to ``ci``."""
    import os

    from cathrepo.cli import COMMANDS, cli

    command = cli.get_command(ctx, "ci") if "ci" in COMMANDS else None
    incoming = merged_rev(os.environ.get("GIT_REFLOG_ACTION", ""))
    why = ("this cathrepo has no 'ci' command" if command is None else "HEAD is not on a branch" if branch is None
           else "git did not name the one branch being merged" if incoming is None else "")
    if why:
        click.echo(f"cathrepo hooks: merge gates skipped ({why}).", err=True)
        return
    assert command is not None and branch is not None and incoming is not None
    with command.make_context("ci", ["--base", branch, "--head", incoming], parent=ctx) as sub:
        command.invoke(sub)


def merged_rev(action: str) -> str | None:
    """The one revision a ``git merge`` merges, from its ``GIT_REFLOG_ACTION`` ("merge side" -> "side");
    None for an octopus merge or anything else."""
    words = action.split()
    revs = [w for w in words[1:] if not w.startswith("-")]
    return revs[0] if words[:1] == ["merge"] and len(revs) == 1 else None
