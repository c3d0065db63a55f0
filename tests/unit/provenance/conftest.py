"""Keys are created in a scratch configuration directory, never in the user's."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    path = tmp_path / "config"
    monkeypatch.setenv("CATHREPO_CONFIG_DIR", str(path))
    return path
