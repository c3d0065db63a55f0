"""cathrepo init [PATH] [--base MODEL] [--remote URL] [--author EMAIL] [--no-hooks] [--install-source SPEC]"""

from __future__ import annotations

from pathlib import Path

import click

from cathrepo.cli.shared import progress, repo_dir


@click.command("init")
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--base", metavar="MODEL", help="Base model: a Hugging Face model directory or hub id "
              "(default: the embedded SmolLM2-135M-Instruct).")
@click.option("--remote", metavar="URL", help="DVC remote for edit weights (default: a local directory).")
@click.option("--author", metavar="EMAIL", help="Identity your signing key and commits carry.")
@click.option("--no-hooks", is_flag=True, help="Do not install cathrepo's git hooks (cathrepo hooks install does later).")
@click.option("--install-source", metavar="SPEC", help="What the CI job pip-installs cathrepo from "
              "('cathrepo @ git+URL@TAG', a wheel URL; default: a wheel of this cathrepo kept in the repository).")
@click.pass_context
def init_cmd(ctx: click.Context, path: Path | None, base: str | None, remote: str | None,
             author: str | None, no_hooks: bool, install_source: str | None) -> None:
    """Create an edit repository on a base model, with signing and DVC storage."""
    from cathrepo.repo import Repo

    target = path or Path(repo_dir(ctx))
    with progress("Initialising"):
        repo = Repo.init(target, base=base, remote=remote, author=author, hooks=not no_hooks,
                         install_source=install_source)
    config = repo.config
    click.echo(f"Initialised cathrepo repository in {repo.root}")
    click.echo(f"  base model  {config.base.name} ({config.base.family}, sha256 {config.base.sha256[:12]}…)")
    click.echo(f"  signing key {repo.signing_key().private_path} ({repo.signing_key().fingerprint})")
    click.echo(f"  DVC remote  {repo.storage.remote_url()}")
    installed = [h.name for h in repo.hooks() if h.state == "current"]
    click.echo(f"  git hooks   {', '.join(installed) or 'none'} (cathrepo hooks list)")
    click.echo(f"  CI installs {config.ci.install}")
