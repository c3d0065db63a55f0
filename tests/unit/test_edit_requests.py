"""``cathrepo edit``'s inputs: --file facts become one request each, or one per --batch-size facts."""

from __future__ import annotations

import json

import pytest

from cathrepo.cli.shared import edit_requests
from cathrepo.exceptions import InvalidInputError

META = {"source": "test://file", "author": None, "confidence": 1.0, "risk": "low"}


def _file(tmp_path, n):
    rows = [{"prompt": f"Subject {i} lives in", "subject": f"Subject {i}", "target_new": f"City{i}"} for i in range(n)]
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(rows))
    return path


def _ask(path=None, **kw):
    args = {"prompt": None, "subject": None, "target": None, "target_true": None, "facts_file": path,
            "passage_file": None, "limit": None, "method": None, "meta": META}
    return edit_requests(**{**args, **kw})


def test_batches_group_the_file_in_order(tmp_path):
    path = _file(tmp_path, 5)
    single, _ = _ask(path)
    assert [len(r.facts) for r in single] == [1, 1, 1, 1, 1]
    batched, _ = _ask(path, batch_size=2)
    assert [len(r.facts) for r in batched] == [2, 2, 1]
    assert [f.subject for r in batched for f in r.facts] == [f"Subject {i}" for i in range(5)]
    assert all(r.source == "test://file" for r in batched)
    limited, _ = _ask(path, batch_size=2, limit=3)
    assert [len(r.facts) for r in limited] == [2, 1]


def test_bad_batch_sizes_say_what_to_do(tmp_path):
    with pytest.raises(InvalidInputError, match="at least 1"):
        _ask(_file(tmp_path, 2), batch_size=0)
    with pytest.raises(InvalidInputError, match="--file"):
        _ask(prompt="Rome is in", subject="Rome", target="France", batch_size=2)
