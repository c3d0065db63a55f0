"""``cathrepo explain`` and ``generate --tenant`` on the command line (tiny model): JSON naming the cause,
the human listing, and an unknown tenant refused with exit status 2 and the known tenants."""

from __future__ import annotations

import json

import pytest

from cathrepo.config import TenantConfig
from cathrepo.repo import Repo
from tests.cli.runner import cathrepo
from tests.func.test_repo_flow import FACT
from tests.func.test_tenants import set_tenants

pytestmark = pytest.mark.usefixtures("one_thread")


def test_explain_and_generate_for_a_tenant(repo_dir):
    cathrepo("edit", "--prompt", FACT.prompt, "--subject", FACT.subject, "--target", FACT.target_new,
             "--true", FACT.target_true, "--source", "ticket://7", cwd=repo_dir)
    repo = Repo.open(repo_dir)
    (eid,) = repo.stack().active
    set_tenants(repo, {"acme": TenantConfig(), "bare": TenantConfig(exclude=[f"edit:{eid[:8]}"])})

    data = json.loads(cathrepo("explain", FACT.prompt, "--max-new-tokens", "1", "--json", cwd=repo_dir).stdout)
    assert data["answer"].startswith(FACT.target_new) and data["cause"] == [eid]
    assert data["edits"][0]["provenance"]["source"] == "ticket://7" and data["tenant"] is None
    text = cathrepo("explain", FACT.prompt, "--max-new-tokens", "1", "--tenant", "acme", cwd=repo_dir).stdout
    assert f"CAUSE {eid[:12]}" in text and "ticket://7" in text and "without it:" in text
    bare = cathrepo("explain", FACT.prompt, "--max-new-tokens", "1", "--tenant", "bare", cwd=repo_dir).stdout
    assert "No active edits." in bare

    gen = json.loads(cathrepo("generate", FACT.prompt, "--max-new-tokens", "1", "--tenant", "bare", "--json",
                              cwd=repo_dir).stdout)
    assert gen["edits"] == [] and gen["tenant"] == "bare" and not gen["text"].startswith(FACT.target_new)
    for command in ("generate", "explain"):
        proc = cathrepo(command, FACT.prompt, "--tenant", "acm", cwd=repo_dir, ok=False)
        assert proc.returncode == 2 and "No tenant 'acm'" in proc.stderr and "Known tenants: acme, bare" in proc.stderr
