"""Functional tests run real git, DVC and ssh-keygen in temporary repositories.

Every test gets its own configuration and data directories (keys, default DVC remotes) and a git
"global" configuration of its own (``isolated_env`` of tests/conftest.py, autouse for every test), so
nothing here reads or writes the user's.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def no_git_identity(isolated_env, monkeypatch) -> Path:
    """A machine like a fresh CI runner: empty HOME, no global or system git identity."""
    home = isolated_env / "empty-home"
    home.mkdir()
    empty = isolated_env / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


@pytest.fixture
def storage_repo(signed_git):
    """``(git, storage)``: a signed git repository with DVC storage and a local default remote."""
    from cathrepo.repo.storage import Storage

    storage = Storage.init(signed_git.root)
    signed_git.add(list(storage.created_files))
    signed_git.commit("Initialise storage")
    return signed_git, storage
