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
def signing_key():
    """Alice's Ed25519 key in the scratch configuration directory."""
    from cathrepo.provenance.keys import ensure_key

    return ensure_key("alice@example.com")


@pytest.fixture
def signed_git(tmp_path, signing_key):
    """A git repository whose commits are signed by ``signing_key``; its first commit adds allowed_signers."""
    from cathrepo.provenance.allowed_signers import add_signer
    from cathrepo.repo.git import Git

    git = Git.init(tmp_path / "repo")
    add_signer(git.root / "allowed_signers", signing_key.principal, signing_key.public_key)
    git.configure_signing(signing_key, git.root / "allowed_signers")
    git.add(["allowed_signers"])
    git.commit("Add allowed_signers")
    return git


@pytest.fixture
def storage_repo(signed_git):
    """``(git, storage)``: a signed git repository with DVC storage and a local default remote."""
    from cathrepo.repo.storage import Storage

    storage = Storage.init(signed_git.root)
    signed_git.add(list(storage.created_files))
    signed_git.commit("Initialise storage")
    return signed_git, storage
