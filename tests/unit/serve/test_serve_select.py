"""How a request's ``model`` field is read: a ref, a tenant at the default ref, or TENANT@REF."""

from __future__ import annotations

import pytest

from cathrepo.serve.select import ModelName, parse_model_name

TENANTS = frozenset({"acme", "globex"})


@pytest.mark.parametrize(("name", "expected"), [
    (None, ModelName(None, "production")),
    ("", ModelName(None, "production")),
    ("  ", ModelName(None, "production")),
    ("main", ModelName(None, "main")),
    ("canary", ModelName(None, "canary")),
    ("0123abcd", ModelName(None, "0123abcd")),
    ("acme", ModelName("acme", "production")),          # a tenant name wins over a ref of that name
    (" acme ", ModelName("acme", "production")),
    ("acme@main", ModelName("acme", "main")),
    ("globex@v1.2", ModelName("globex", "v1.2")),
    ("nosuch@main", ModelName("nosuch", "main")),        # checked against the ref's config later (404)
    ("@main", ModelName(None, "main")),
    ("acme@", ModelName("acme", "production")),
])
def test_model_names(name, expected):
    assert parse_model_name(name, "production", TENANTS) == expected
