"""Tenants on a real repository (tiny model): each tenant sees only its share of the served revision's
active set (by edit, tag and branch, include then exclude), generation differs between tenants, an
unknown tenant is an error, and a pack is used whole or not at all."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cathrepo.config import TenantConfig, dump_config, load_config
from cathrepo.exceptions import ConfigError
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo, layout
from cathrepo.repo.tenants import UnknownTenantError, tenant_edits, tenant_ids, tenant_names
from tests.func.test_ci import THIRD, _merge_gates
from tests.func.test_repo_flow import FACT, OTHER, _tune

pytestmark = pytest.mark.usefixtures("one_thread")


def set_tenants(repo: Repo, tenants: dict[str, TenantConfig]) -> str:
    """Commit ``cathrepo.toml`` with these tenants; returns the commit."""
    config = load_config(repo.root / layout.CONFIG)
    (repo.root / layout.CONFIG).write_text(dump_config(dataclasses.replace(config, tenants=tenants)))
    repo.git.add([layout.CONFIG])
    return repo.git.commit("Tenants")


def three_edits(tmp_path, tiny_llama, corpus) -> Repo:
    """Edits other (tagged acme-v1), fact (branch 'two' ends here), third; ids in ``repo.ids``."""
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "edits", base=str(model_dir))
    _tune(repo, corpus)
    _merge_gates(repo, ["regression"])
    ids = []
    for fact, ref in ((OTHER, ["tag", "-m", "acme v1", "acme-v1"]), (FACT, ["branch", "two"]), (THIRD, None)):
        (outcome,) = repo.edit([EditRequest(fact)])
        ids.append(outcome.edit_id)
        if ref:
            repo.git.run(ref)
    repo.ids = ids  # type: ignore[attr-defined]
    return repo


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus):
    return three_edits(tmp_path, tiny_llama, corpus)


def _weights(state) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def _close(a, b, atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_each_tenant_sees_only_its_edits(repo):
    other, fact, third = repo.ids
    set_tenants(repo, {
        "acme": TenantConfig(include=["tag:acme-v1"]),
        "globex": TenantConfig(exclude=[f"edit:{other[:6]}"]),
        "initech": TenantConfig(include=["branch:two", f"edit:{third[:8]}"], exclude=["tag:acme-v1"]),
        "everyone": TenantConfig(),
    })
    assert tenant_names(repo) == ["acme", "everyone", "globex", "initech"]
    assert tenant_ids(repo, "acme") == [other]
    assert tenant_ids(repo, "globex") == [fact, third]
    assert tenant_ids(repo, "initech") == [fact, third]  # order is the stack's, not the selectors'
    assert tenant_ids(repo, "everyone") == tenant_ids(repo, None) == [other, fact, third]
    assert [e.id for e in tenant_edits(repo, "acme")] == [other]

    acme = repo.generate(FACT.prompt, tenant="acme", max_new_tokens=3)
    globex = repo.generate(FACT.prompt, tenant="globex", max_new_tokens=3)
    assert acme.edits == (other,) and acme.tenant == "acme" and globex.edits == (fact, third)
    assert globex.text.startswith(FACT.target_new) and not acme.text.startswith(FACT.target_new)
    assert repo.generate(FACT.prompt, "acme-v1", max_new_tokens=3).text == acme.text  # the tag's model

    repo.revert(other, gate=False)  # a filter over the served revision: a reverted edit is gone for all
    assert tenant_ids(repo, "acme") == [] and tenant_ids(repo, "acme", "HEAD~1") == [other]


def test_an_unknown_tenant_is_an_error_never_the_full_set(repo):
    set_tenants(repo, {"acme": TenantConfig(include=["tag:acme-v1"])})
    with pytest.raises(UnknownTenantError, match="No tenant 'acm' in cathrepo.toml at HEAD") as info:
        repo.materialize(tenant="acm")
    assert "Known tenants: acme" in (info.value.hint or "")
    with pytest.raises(UnknownTenantError) as info:  # tenants are read at the revision served
        repo.generate(FACT.prompt, "HEAD~1", tenant="acme")
    assert "Known tenants: none" in (info.value.hint or "")


def test_a_ref_that_does_not_exist_is_an_error(repo):
    set_tenants(repo, {"a": TenantConfig(include=["tag:nope"]), "b": TenantConfig(include=["branch:acme-v1"]),
                       "c": TenantConfig(include=["edit:00000000ffff"])})
    with pytest.raises(ConfigError, match=r"\[tenants.a\] names tag:nope, and there is no tag 'nope'"):
        tenant_ids(repo, "a")
    with pytest.raises(ConfigError, match="no branch 'acme-v1'"):  # a tag is not taken for a branch
        tenant_ids(repo, "b")
    assert tenant_ids(repo, "c") == []  # an edit not (or no longer) active: the tenant simply lacks it


def test_a_pack_is_used_whole_or_its_edits_apply_one_by_one(repo):
    other, fact, third = repo.ids
    set_tenants(repo, {"acme": TenantConfig(include=["tag:acme-v1"]), "all": TenantConfig()})
    before_all = _weights(repo.materialize(tenant="all"))
    before_acme = _weights(repo.materialize(tenant="acme"))
    assert not _close(before_all, before_acme)
    repo.consolidate(strategy="cat")
    assert repo.stack().packs
    assert _close(before_all, _weights(repo.materialize(tenant="all")))
    assert _close(before_acme, _weights(repo.materialize(tenant="acme")))  # not the pack of all three
