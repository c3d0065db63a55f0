"""cathrepo.toml: schema 1 files (with the unused [policy] table and [tenants]) still load."""

from __future__ import annotations

import logging

import pytest

from cathrepo.config import SCHEMA_VERSION, dump_config, parse_config
from cathrepo.exceptions import ConfigError

SCHEMA_1 = """
schema_version = 1

[base]
name = "tiny"
source = "/models/tiny"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
family = "llama"

[edit]
method = "rome"
retry_layers = 2

[policy]
merge_strategy = "cat"

[policy.approvals]
low = 0
high = 2

[tenants.acme]
include = ["tag:acme"]
"""


def test_a_schema_1_file_loads_drops_policy_and_keeps_its_tenants(caplog):
    with caplog.at_level(logging.INFO, logger="cathrepo.config"):
        config = parse_config(SCHEMA_1)
    assert config.schema_version == SCHEMA_VERSION == 2
    assert config.edit.retry_layers == 2 and config.base.name == "tiny"
    assert "[policy] is not used" in caplog.text and "[tenants] is not used" not in caplog.text
    assert config.tenants["acme"].include == ["tag:acme"]  # schema 1 wrote the syntax tenants read now
    written = dump_config(config)
    assert "policy" not in written and "[tenants.acme]" in written and "schema_version = 2" in written
    assert parse_config(written) == config


def test_a_newer_file_is_refused():
    with pytest.raises(ConfigError, match="schema_version 3"):
        parse_config(SCHEMA_1.replace("schema_version = 1", "schema_version = 3"))
