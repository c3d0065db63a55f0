"""GatePolicy: round trip through a TOML table, unknown keys dropped with a warning, validation."""

from __future__ import annotations

import logging

import pytest
import tomli_w

from cathrepo.exceptions import ConfigError
from cathrepo.gates.policy import DEFAULT_STAGES, GatePolicy


def test_round_trip_through_toml():
    import tomllib

    policy = GatePolicy(efficacy_min=0.9, stages={"edit": ("efficacy", "regression")}, mmlu_limit=5)
    text = tomli_w.dumps({"gates": policy.to_dict()})
    again = GatePolicy.from_dict(tomllib.loads(text)["gates"])
    assert again == policy
    assert again.gates_for("edit") == ("efficacy", "regression")
    assert again.gates_for("promote") == DEFAULT_STAGES["promote"]


def test_unknown_keys_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        policy = GatePolicy.from_dict({"efficacy_min": 0.5, "colour": "blue"})
    assert policy.efficacy_min == 0.5
    assert "colour" in caplog.text


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="efficacy_min"):
        GatePolicy(efficacy_min=1.5)
    with pytest.raises(ConfigError, match="stage"):
        GatePolicy.from_dict({"stages": {"deploy": ["mmlu"]}})
    with pytest.raises(ConfigError, match="schema_version"):
        GatePolicy.from_dict({"schema_version": 99})


def test_every_field_has_help():
    assert all(GatePolicy.help().values())


def test_default_stage_gates_are_registered():
    from cathrepo.gates.base import GATES

    for names in DEFAULT_STAGES.values():
        for name in names:
            assert name in GATES


def test_neighbours_must_be_positive():
    with pytest.raises(ConfigError, match="neighbors"):
        GatePolicy(neighbors=0)
    assert GatePolicy.from_dict({"neighbors": 12}).neighbors == 12
