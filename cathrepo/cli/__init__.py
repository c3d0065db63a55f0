"""The ``cathrepo`` command line: a click group whose commands load lazily.

``main`` is the one place that turns a :class:`~cathrepo.exceptions.CathrepoError` into a red line
and an exit code; ``--traceback`` shows the stack instead. Commands live one per file in
``cathrepo/cli/commands/`` and are imported only when invoked, so ``cathrepo --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from typing import Any

import click

from cathrepo import __version__

# command name -> "module:function" under cathrepo.cli.commands
COMMANDS: dict[str, str] = {
    "init": "init:init_cmd",
    "edit": "edit:edit_cmd",
    "forget": "forget:forget_cmd",
    "log": "log:log_cmd",
    "show": "show:show_cmd",
    "status": "status:status_cmd",
    "verify": "verify:verify_cmd",
    "revert": "revert:revert_cmd",
    "promote": "promote:promote_cmd",
    "rollback": "rollback:rollback_cmd",
    "deployments": "deployments:deployments_cmd",
    "generate": "generate:generate_cmd",
    "explain": "explain:explain_cmd",
    "export": "export:export_cmd",
    "push": "remote:push_cmd",
    "pull": "remote:pull_cmd",
    "gate": "gate:gate_cmd",
    "trace": "trace:trace_cmd",
    "bench": "bench:bench_group",
    "worker": "worker:worker_group",
    "propose": "propose:propose_cmd",
    "ci": "ci:ci_cmd",
    "merge": "merge:merge_cmd",
    "resolve": "merge:resolve_cmd",
    "consolidate": "consolidate:consolidate_cmd",
    "canary": "canary:canary_cmd",
    "rebase": "rebase:rebase_cmd",
    "branch": "branch:branch_cmd",
    "checkout": "branch:checkout_cmd",
    "hooks": "hooks:hooks_group",
    "approve": "approve:approve_cmd",
    "keys": "keys:keys_group",
    "serve": "serve:serve_cmd",
}

SHORT_HELP: dict[str, str] = {
    "init": "Create an edit repository on a base model.",
    "edit": "Compute, gate and commit an edit (one fact or a file of facts).",
    "forget": "Make the model forget a fact (negate, erase, suppress, replace) as a gated, signed edit.",
    "log": "List the edits in the history.",
    "show": "Show one edit's record.",
    "status": "Show the repository's base model, active edits and storage state.",
    "verify": "Check every signature and file hash up to a revision.",
    "revert": "Remove an edit from the active set in a new signed commit.",
    "promote": "Record that an environment serves a revision (signed deployment log).",
    "rollback": "Return an environment to the revision it served before.",
    "deployments": "Show the deployment log and what each environment serves.",
    "generate": "Generate from the model materialized at a revision.",
    "explain": "Answer a prompt and show which active edits caused the answer, with their provenance.",
    "export": "Write the active edits as one PEFT adapter or a merged model directory.",
    "push": "Upload edit weights to the DVC remote.",
    "pull": "Download edit weights from the DVC remote.",
    "gate": "Run the gates on a revision.",
    "trace": "Locate where a fact lives (causal tracing, patching, saliency).",
    "bench": "Benchmarks: edit quality and speed.",
    "worker": "Keep the model loaded in a resident process that runs model commands.",
    "propose": "Commit facts as signed proposals (no weights) for review in a pull request.",
    "ci": "Verify a branch, realise its proposals and gate its merge (for CI and hooks).",
    "merge": "Merge another branch's edits in one signed commit, after the merge gates.",
    "resolve": "Merge a branch, settling each conflict by the edit you keep.",
    "consolidate": "Fold the active edits into one gated pack (cat, svd:R, ties, dare).",
    "canary": "Compare canary with production on real prompts; roll back past a limit.",
    "rebase": "Carry every edit to a new base model (recomputed and gated) on a new branch.",
    "branch": "List the branches of edits, or create one.",
    "checkout": "Switch to another branch of edits.",
    "hooks": "Install, list or run cathrepo's git hooks (pre-commit, pre-push, pre-merge-commit).",
    "approve": "Approve an edit: a signature over its record (high-risk edits need approvals).",
    "keys": "List, add and revoke the keys that may sign and approve (allowed_signers).",
    "serve": "Serve the edited model over HTTP with OpenAI's API (refs and tenants as models).",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when the command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"cathrepo.cli.commands.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cathrepo")
@click.option("-C", "repo_dir", default=".", metavar="PATH", help="Run as if started in PATH.")
@click.option("--traceback", is_flag=True, help="Show the full stack on errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, repo_dir: str, traceback: bool, verbose: int) -> None:
    """cathrepo: git for model edits."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["repo_dir"] = repo_dir
    ctx.obj["traceback"] = traceback


def quiet_libraries() -> None:
    """Results only: no weight-loading bars, no deprecation notices meant for library authors.

    transformers reads ``HF_HUB_DISABLE_PROGRESS_BARS`` when it is first imported (its "Loading weights"
    and "Writing model shards" bars, and huggingface_hub's), which happens later, inside a command.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already (in-process callers): switch the bars off directly
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the group and map cathrepo errors to one red line and an exit code.

    Run as the ``cathrepo`` program (``argv`` None), a model command goes to the resident worker when
    one runs (``cathrepo worker``); called with ``argv`` it always runs in this process.
    """
    from cathrepo.exceptions import CathrepoError

    if argv is None:
        from cathrepo.cli.worker import forward

        forwarded = forward(sys.argv[1:])
        if forwarded is not None:
            sys.exit(forwarded)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub at run time; set HF_HUB_OFFLINE=0 to allow it
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    args = sys.argv[1:] if argv is None else argv
    try:
        return cli.main(args=args, prog_name="cathrepo", standalone_mode=False)
    except CathrepoError as exc:
        if "--traceback" in args:
            raise
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.secho("Aborted.", fg="red", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
