"""``[tenants.<name>]`` in cathrepo.toml: selectors parsed and validated, bad tables named, round trip."""

from __future__ import annotations

import pytest

from cathrepo.config import TenantConfig, dump_config, parse_config, parse_selector
from cathrepo.exceptions import ConfigError

BASE = """
schema_version = 2

[base]
name = "tiny"
source = "/models/tiny"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
family = "llama"
"""


def test_selectors_parse_as_a_user_writes_them():
    assert parse_selector("edit:3F1C") == ("edit", "3f1c")
    assert parse_selector("tag:acme-v1") == ("tag", "acme-v1")
    assert parse_selector("branch: feature/x ") == ("branch", "feature/x")


@pytest.mark.parametrize("bad", ["3f1c", "edit:", "commit:abcd", "edit:xyz1", "edit:3f1", "tag:", 7, ":v1"])
def test_a_bad_selector_is_refused_with_the_syntax_in_the_hint(bad):
    with pytest.raises(ConfigError) as info:
        parse_selector(bad)
    assert "edit:" in (info.value.hint or "") or "hex" in info.value.message


def test_tenants_load_and_round_trip():
    text = BASE + """
[tenants.acme]
include = ["tag:acme-v1", "edit:3f1c"]
exclude = ["edit:abcd12"]
description = "Acme Corp"

[tenants.globex]
"""
    config = parse_config(text)
    assert config.tenants["acme"] == TenantConfig(["tag:acme-v1", "edit:3f1c"], ["edit:abcd12"], "Acme Corp")
    assert config.tenants["globex"] == TenantConfig()  # empty include: every active edit
    assert parse_config(dump_config(config)) == config


def test_a_file_without_tenants_keeps_its_bytes():
    written = dump_config(parse_config(BASE))
    assert "tenants" not in written


@pytest.mark.parametrize(("table", "match"), [
    ('[tenants.acme]\ninclude = "tag:v1"', r"\[tenants.acme\]: 'include' must be a list"),
    ('[tenants.acme]\ninclude = ["v1"]', r"\[tenants.acme\]: 'v1' is not an edit selector"),
    ('[tenants.acme]\nexclude = ["edit:zz"]', r"\[tenants.acme\]: 'edit:zz' does not name an edit id"),
    ('[tenants."a b"]\ninclude = []', "'a b' is not a tenant name"),
    ("tenants = 3", r"\[tenants\] must hold one table per tenant"),
])
def test_a_bad_tenant_table_names_itself(table, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(table + "\n" + BASE if table.startswith("tenants =") else BASE + table)


def test_an_unknown_key_in_a_tenant_is_dropped_with_a_warning(caplog):
    config = parse_config(BASE + '[tenants.acme]\ninclude = []\nedits = ["x"]\n')
    assert config.tenants["acme"] == TenantConfig()
    assert "ignoring unknown key 'edits' in [tenants.acme]" in caplog.text
