"""``cathrepo init``: a git repository with DVC storage, signing, a base model and an empty stack.

All-or-nothing: if any step fails, what this verb created is removed again and a directory that
existed before is left as it was.
"""

from __future__ import annotations

import getpass
import json
import logging
import shutil
import socket
from pathlib import Path

from cathrepo.config import BaseModelConfig, RepoConfig, dump_config
from cathrepo.exceptions import InvalidInputError, ModelLoadError
from cathrepo.repo import layout
from cathrepo.repo.layout import Stack
from cathrepo.repo.workflow import WORKFLOW, WORKFLOW_TEXT, ci_files

__all__ = ["GITIGNORE", "WORKFLOW", "WORKFLOW_TEXT", "init_repo"]

log = logging.getLogger(__name__)

GITIGNORE = """\
# cathrepo: weights live in DVC; these never belong in git
*.safetensors.tmp
/.cathrepo/
"""


def default_principal(git_email: str | None) -> str:
    """The identity keys and commits carry when the user gives none: git's user.email or user@host."""
    if git_email:
        return git_email
    host = socket.gethostname().split(".")[0] or "localhost"
    return f"{getpass.getuser()}@{host}"


def _model_type(path: Path) -> str:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"Cannot read {path / 'config.json'}: {exc}") from None
    text = config.get("text_config") or {}
    return str(config.get("model_type") or text.get("model_type") or "")


def init_repo(path: Path, *, base: str | None, remote: str | None, author: str | None, hooks: bool = False,
              install_source: str | None = None) -> Path:
    """Create a cathrepo repository in ``path`` (created if missing), make its first signed commit, and
    return its root.

    Args:
        hooks: install cathrepo's git hooks after the first commit (hooks that are not cathrepo's are left
            as they are; ``cathrepo hooks list`` shows which).
        install_source: the pip requirement its CI job installs cathrepo from (default: a wheel of this
            cathrepo, kept in the repository: :mod:`cathrepo.repo.workflow`).
    """
    from cathrepo.models import family_for, resolve_model, weights_sha256
    from cathrepo.provenance.allowed_signers import add_signer
    from cathrepo.provenance.keys import ensure_key
    from cathrepo.repo.git import Git
    from cathrepo.repo.storage import Storage

    path = path.expanduser().resolve()
    if (path / layout.CONFIG).exists():
        raise InvalidInputError(f"'{path}' is already a cathrepo repository.", hint="Use it as it is.")
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"'{path}' exists and is not a directory.")
    # 1. The base model first: an unknown model must fail before anything is written.
    resolved = resolve_model(base)
    family = family_for(_model_type(resolved.path)).name
    sha = weights_sha256(resolved.path)
    ci = ci_files(resolved.source, install_source)
    existed = path.exists()
    before = set(path.iterdir()) if existed else set()
    try:
        # 2. git, with signing by the user's key (created outside the repository on first use).
        git = Git(path) if (path / ".git").exists() else Git.init(path)
        principal = author if author and "@" in author else default_principal(git.config_get("user.email"))
        key = ensure_key(principal)
        add_signer(path / layout.ALLOWED_SIGNERS, key.principal, key.public_key)
        git.configure_signing(key, path / layout.ALLOWED_SIGNERS)
        # 3. DVC storage with a local directory remote.
        storage = Storage.init(path, remote)
        # 4. The repository's own files.
        config = RepoConfig(base=BaseModelConfig(name=resolved.name, source=resolved.source, sha256=sha,
                                                 family=family), ci=ci.config)
        (path / layout.CONFIG).write_text(dump_config(config), encoding="utf-8")
        (path / layout.STACK).write_bytes(Stack().to_bytes())
        (path / ".gitignore").write_text(GITIGNORE)
        for name, (data, mode) in ci.files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
            (path / name).chmod(mode)
        files = [layout.CONFIG, layout.STACK, layout.ALLOWED_SIGNERS, ".gitignore", *ci.files,
                 *(str(p.relative_to(path)) for p in storage.created_files)]
        git.add(files)
        git.commit(
            f"Initialize cathrepo on {resolved.name}",
            {"Cathrepo-Action": "init", "Cathrepo-Base-Sha256": sha},
            sign_with=key,
        )
        if hooks:
            from cathrepo.repo import Repo
            from cathrepo.repo.hooks import install

            install(Repo(path), skip_foreign=True)
    except BaseException:
        _undo(path, existed, before)
        raise
    log.info("Initialised %s on %s (%s)", path, resolved.name, sha[:12])
    return path


def _undo(path: Path, existed: bool, before: set[Path]) -> None:
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for item in set(path.iterdir()) - before:
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
