"""CLI tests drive the real command line, in-process through ``main`` (one test runs it as a subprocess
end to end); every test runs in the scratch environment of tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.cli.runner import cathrepo
from tests.func.test_repo_flow import _tune


@pytest.fixture
def repo_dir(tmp_path, tiny_llama):
    """A repository on the tiny Llama, made by ``cathrepo init`` and tuned for a tiny random model."""
    from cathrepo.repo import Repo

    _, _, model_dir = tiny_llama
    out = cathrepo("init", str(tmp_path / "r"), "--base", str(model_dir), cwd=tmp_path)
    assert "Initialised cathrepo repository" in out.stdout
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["The city of Paris is in France.", "Rome is the capital of Italy."] * 40))
    _tune(Repo.open(tmp_path / "r"), corpus)
    return tmp_path / "r"
