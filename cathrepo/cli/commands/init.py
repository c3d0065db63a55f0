"""cathrepo init [PATH] [--base MODEL] [--remote URL] [--author EMAIL]"""

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
@click.pass_context
def init_cmd(ctx: click.Context, path: Path | None, base: str | None, remote: str | None,
             author: str | None) -> None:
    """Create an edit repository on a base model, with signing and DVC storage."""
    from cathrepo.repo import Repo

    target = path or Path(repo_dir(ctx))
    with progress("Initialising"):
        repo = Repo.init(target, base=base, remote=remote, author=author)
    config = repo.config
    click.echo(f"Initialised cathrepo repository in {repo.root}")
    click.echo(f"  base model  {config.base.name} ({config.base.family}, sha256 {config.base.sha256[:12]}…)")
    click.echo(f"  signing key {repo.signing_key().private_path} ({repo.signing_key().fingerprint})")
    click.echo(f"  DVC remote  {repo.storage.remote_url()}")
