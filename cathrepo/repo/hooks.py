"""``cathrepo hooks install | uninstall | list``: cathrepo's git hooks in an edit repository.

The hook scripts ship inside the package (``cathrepo/data/hooks/``, the one source; the project's
top-level ``hooks/`` is a copy that a test keeps equal). Each is a short POSIX sh script that runs
``cathrepo hooks run <name>``; installing one writes the absolute path of the Python that installs it
into the copy (``CATHREPO_PYTHON=...``), so the hook works from a shell where that environment is not
active, and falls back to ``cathrepo`` on ``PATH`` when that Python is gone.

Hooks go where git runs them: ``git rev-parse --git-path hooks``, which honours ``core.hooksPath`` and
linked work trees. A hook that is not cathrepo's is never overwritten without ``force``; with it, the
old hook is kept beside it as ``<name>.pre-cathrepo`` and ``uninstall`` puts it back.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from cathrepo.exceptions import InvalidInputError
from cathrepo.files import atomic_write

if TYPE_CHECKING:
    from cathrepo.repo import Repo

HOOK_NAMES = ("pre-commit", "pre-push", "pre-merge-commit")
#: The second line of every cathrepo hook starts with this; a hook without it is someone else's.
MARKER = "# cathrepo hook "
PYTHON_LINE = "CATHREPO_PYTHON=''"
BACKUP_SUFFIX = ".pre-cathrepo"

MISSING, CURRENT, OUTDATED, FOREIGN = "missing", "current", "outdated", "foreign"


@dataclass(frozen=True)
class HookState:
    """One hook in the repository's hooks directory.

    Attributes:
        name: git's name for it (``pre-commit``).
        path: where git looks for it.
        state: ``missing``; ``current`` (this cathrepo's script, run by this Python); ``outdated``
            (cathrepo's, but another version's script or another Python); ``foreign`` (not cathrepo's).
        python: the Python a cathrepo hook runs (None: ``cathrepo`` on PATH, or not cathrepo's).
        backup: a foreign hook kept aside by ``install --force``, which ``uninstall`` restores.
    """

    name: str
    path: Path
    state: str
    python: str | None = None
    backup: Path | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "path": str(self.path), "state": self.state, "python": self.python,
                "backup": str(self.backup) if self.backup else None}


def template(name: str) -> str:
    """The packaged script of hook ``name``, before installing fills in the Python."""
    if name not in HOOK_NAMES:
        raise InvalidInputError(f"cathrepo has no '{name}' hook.", hint=f"Hooks: {', '.join(HOOK_NAMES)}.")
    return resources.files("cathrepo.data").joinpath("hooks", name).read_text(encoding="utf-8")


def render(name: str, python: str | None = None) -> str:
    """Hook ``name`` as installed for ``python`` (default: this interpreter)."""
    text = template(name)
    assert PYTHON_LINE in text, f"the packaged {name} hook lost its {PYTHON_LINE} line"
    return text.replace(PYTHON_LINE, f"CATHREPO_PYTHON={shlex.quote(python or sys.executable)}", 1)


def hooks_dir(repo: Repo) -> Path:
    """The directory git runs hooks from (``core.hooksPath`` when set, else the repository's own)."""
    path = Path(repo.git.run(["rev-parse", "--git-path", "hooks"]).strip())
    return path if path.is_absolute() else (repo.root / path).resolve()


def _python_of(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("CATHREPO_PYTHON="):
            words = shlex.split(line.removeprefix("CATHREPO_PYTHON="))
            return words[0] if words and words[0] else None
    return None


def _state(directory: Path, name: str) -> HookState:
    path = directory / name
    backup = path.with_name(name + BACKUP_SUFFIX)
    kept = backup if backup.exists() else None
    if not path.exists() and not path.is_symlink():
        return HookState(name, path, MISSING, backup=kept)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return HookState(name, path, FOREIGN, backup=kept)
    lines = text.splitlines()
    if len(lines) < 2 or not lines[1].startswith(MARKER):
        return HookState(name, path, FOREIGN, backup=kept)
    current = text == render(name) and os.access(path, os.X_OK)
    return HookState(name, path, CURRENT if current else OUTDATED, _python_of(text), kept)


def states(repo: Repo) -> list[HookState]:
    """Each of cathrepo's hooks as the repository has it now."""
    directory = hooks_dir(repo)
    return [_state(directory, name) for name in HOOK_NAMES]


def install(repo: Repo, *, force: bool = False, skip_foreign: bool = False) -> list[HookState]:
    """Install (or bring up to date) every cathrepo hook, executable, run by this Python.

    Args:
        force: replace hooks that are not cathrepo's (each kept as ``<name>.pre-cathrepo``).
        skip_foreign: leave hooks that are not cathrepo's as they are (``cathrepo init`` in a repository
            that has its own) instead of refusing.

    Raises:
        InvalidInputError: a hook that is not cathrepo's is in the way (nothing is written then).
    """
    before = states(repo)
    foreign = [s for s in before if s.state == FOREIGN]
    if foreign and not force and not skip_foreign:
        names = ", ".join(str(s.path) for s in foreign)
        raise InvalidInputError(
            f"{names} {'is' if len(foreign) == 1 else 'are'} not cathrepo's; nothing was installed.",
            hint=f"Run 'cathrepo hooks install --force' to replace {'it' if len(foreign) == 1 else 'them'} "
                 "(kept as <name>.pre-cathrepo and restored by 'cathrepo hooks uninstall'), or call cathrepo "
                 "from your own hook.")
    for state in before:
        if state.state == CURRENT or (state.state == FOREIGN and not force):
            continue
        state.path.parent.mkdir(parents=True, exist_ok=True)
        if state.state == FOREIGN:
            os.replace(state.path, state.path.with_name(state.name + BACKUP_SUFFIX))
        atomic_write(state.path, render(state.name).encode("utf-8"), mode=0o755)
    return states(repo)


def uninstall(repo: Repo) -> list[HookState]:
    """Remove cathrepo's hooks (restoring a hook ``install --force`` kept aside); others are left alone."""
    for state in states(repo):
        if state.state in (CURRENT, OUTDATED):
            state.path.unlink()
            if state.backup is not None:
                os.replace(state.backup, state.path)
    return states(repo)
