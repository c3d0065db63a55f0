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
from typing import TYPE_CHECKING

from cathrepo.config import BaseModelConfig, RepoConfig, dump_config
from cathrepo.exceptions import InvalidInputError, ModelLoadError
from cathrepo.repo import layout
from cathrepo.repo.layout import Stack

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

WORKFLOW = ".github/workflows/cathrepo.yml"
GITIGNORE = """\
# cathrepo: weights live in DVC; these never belong in git
*.safetensors.tmp
/.cathrepo/
"""

WORKFLOW_TEXT = """\
# Written by `cathrepo init`: every pull request of edits is verified and gated before it can merge.
name: cathrepo gate
on:
  pull_request:
  push:
    branches: [main]
jobs:
  gate:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - name: Install cathrepo (CPU torch first)
        run: |
          pip install torch --index-url https://download.pytorch.org/whl/cpu
          pip install cathrepo
      - name: Fetch edit weights
        run: cathrepo pull
      - name: Verify signatures and hashes
        run: cathrepo verify
      - name: Run the gates
        run: cathrepo gate --report md > gate-report.md
      - uses: actions/upload-artifact@v4
        if: always()
        with:
          name: gate-report
          path: gate-report.md
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


def init_repo(path: Path, *, base: str | None, remote: str | None, author: str | None) -> Path:
    """Create a cathrepo repository in ``path`` (created if missing), make its first signed commit, and
    return its root."""
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
                                                 family=family))
        (path / layout.CONFIG).write_text(dump_config(config), encoding="utf-8")
        (path / layout.STACK).write_bytes(Stack().to_bytes())
        (path / ".gitignore").write_text(GITIGNORE)
        (path / WORKFLOW).parent.mkdir(parents=True, exist_ok=True)
        (path / WORKFLOW).write_text(WORKFLOW_TEXT)
        files = [layout.CONFIG, layout.STACK, layout.ALLOWED_SIGNERS, ".gitignore", WORKFLOW,
                 *(str(p.relative_to(path)) for p in storage.created_files)]
        git.add(files)
        git.commit(
            f"Initialize cathrepo on {resolved.name}",
            {"Cathrepo-Action": "init", "Cathrepo-Base-Sha256": sha},
            sign_with=key,
        )
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
