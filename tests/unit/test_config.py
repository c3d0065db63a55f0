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


BASE_2 = SCHEMA_1.replace("schema_version = 1", "schema_version = 2").split("[policy]")[0]


def test_risk_and_approvals_tables():
    """[risk] maps topics to tiers, [approvals] the approvals each tier needs; both round-trip."""
    config = parse_config(BASE_2 + '[risk]\nmedical = "high"\nfinance = "medium"\n'
                          + "[approvals]\nhigh = 2\nmedium = 1\n")
    assert config.risk == {"medical": "high", "finance": "medium"} and config.approvals.high == 2
    assert config.tier("low", ("Medical",)) == "high" and config.tier("low", ("finance",)) == "medium"
    assert config.tier("medium", ("sport",)) == "medium" and config.tier("high") == "high"
    assert config.approvals.required("medium") == 1 and config.approvals.required("low") == 0
    assert parse_config(dump_config(config)) == config


def test_defaults_make_medical_and_legal_high_and_high_need_one_approval():
    config = parse_config(BASE_2)
    assert config.tier("low", ("legal",)) == "high" and config.approvals.required("high") == 1
    assert "[approvals]" in dump_config(config) and "[risk]" in dump_config(config)


@pytest.mark.parametrize("table, match", [('[risk]\nmedical = "urgent"\n', "not a risk tier"),
                                          ("[approvals]\nhigh = -1\n", "non-negative"),
                                          ("[approvals]\nhigh = true\n", "non-negative"),
                                          ('[stack]\nrestrain = "svd"\n', "'clip' or 'prune'"),
                                          ("[stack]\nrestrain_factor = 0\n", "positive number"),
                                          ("[stack]\nrestrain_factor = true\n", "positive number")])
def test_bad_risk_approvals_or_stack_tables_are_refused(table, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(BASE_2 + table)


def test_the_stack_table_round_trips_and_is_left_out_when_default():
    config = parse_config(BASE_2 + '[stack]\nrestrain = "clip"\nrestrain_factor = 0.5\n')
    assert config.stack.restrain == "clip" and config.stack.restrain_factor == 0.5
    assert "[stack]" in dump_config(config) and parse_config(dump_config(config)) == config
    assert "[stack]" not in dump_config(parse_config(BASE_2))  # a file that never set it keeps its bytes
