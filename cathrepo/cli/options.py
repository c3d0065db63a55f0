"""Option parsing shared by commands."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cathrepo.exceptions import InvalidInputError


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``["layer=8", "v_lr=0.3"]`` → ``{"layer": 8, "v_lr": 0.3}`` (values parsed as JSON when they can be)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--param '{item}' is not KEY=VALUE.", hint="For example: --param layer=8.")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params
