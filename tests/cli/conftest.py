"""CLI tests run the real ``cathrepo`` command line in subprocesses, isolated like the functional tests."""

from tests.func.conftest import isolated_env  # noqa: F401  (autouse: scratch config, data and git identity)
