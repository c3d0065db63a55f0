"""deployments.jsonl lines: sign then check holds; a changed byte, a deleted, inserted or reordered line,
a foreign signer and an entry that contradicts the ones before it each fail, naming the line; the line
format is pinned by a golden file (a fixed key signs deterministically)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from cathrepo.exceptions import InvalidInputError
from cathrepo.files import sha256_bytes
from cathrepo.provenance.allowed_signers import add_signer, read_allowed_signers
from cathrepo.provenance.deployments import (
    NAMESPACE,
    Deployment,
    check_env,
    check_log,
    sign_deployment,
)
from cathrepo.provenance.keys import ensure_key
from tests.unit.provenance.test_signing import _fixed_key

GOLDEN = Path(__file__).parent / "golden"
A, B, C = "a" * 40, "b" * 40, "c" * 40
GATES = {"ran": True, "passed": True, "forced": False, "verdict": "pass (1/1)", "results": {"regression": "pass"}}


@pytest.fixture
def alice(tmp_path):
    key = ensure_key("alice@example.com")
    add_signer(tmp_path / "allowed_signers", key.principal, key.public_key)
    return key


@pytest.fixture
def signers(tmp_path, alice):
    return read_allowed_signers(tmp_path / "allowed_signers")


def _log(key, steps: list[tuple[str, str, str, str | None]]) -> bytes:
    """A log of (env, action, commit, previous) steps, each signed by ``key`` and chained."""
    data, last = b"", None
    for number, (env, action, commit, previous) in enumerate(steps):
        entry = Deployment(env=env, action=action, commit=commit, previous=previous, by="",
                           time=f"2026-12-02T12:00:0{number}+00:00", reason=f"step {number}", gates=GATES,
                           prev_sha256=last)
        line = sign_deployment(key, entry).to_line()
        data, last = data + line + b"\n", sha256_bytes(line)
    return data


STEPS = [("canary", "promote", A, None), ("canary", "promote", B, A), ("production", "promote", A, None),
         ("canary", "promote", C, B)]


def test_sign_then_check(alice, signers):
    data = _log(alice, STEPS)
    check = check_log(data, signers, known={A, B, C}.__contains__)
    assert check.issues == []
    assert [e.commit for e in check.entries] == [A, B, A, C]
    assert check.entries[0].by == "alice@example.com" and check.entries[0].signature["namespace"] == NAMESPACE
    assert check.current == {"canary": C, "production": A}
    assert check.last_sha256 == sha256_bytes(data.splitlines()[-1])
    assert check.rollback_target("canary") == (C, B)
    with pytest.raises(InvalidInputError, match="nothing to roll back to"):
        check.rollback_target("production")
    with pytest.raises(InvalidInputError, match="Nothing was ever promoted to 'staging'"):
        check.rollback_target("staging")


def test_rollbacks_walk_back_one_step_each(alice, signers):
    data = _log(alice, [*STEPS, ("canary", "rollback", B, C), ("canary", "rollback", A, B)])
    check = check_log(data, signers)
    assert check.issues == [] and check.current["canary"] == A
    with pytest.raises(InvalidInputError, match="nothing to roll back to"):
        check.rollback_target("canary")


def _lines(check) -> list[int]:
    return sorted({number for number, _ in check.issues})


def test_a_changed_byte_names_its_line(alice, signers):
    data = _log(alice, STEPS)
    tampered = data.replace(b"step 1", b"step 9")
    check = check_log(tampered, signers)
    assert 2 in _lines(check)
    assert any(n == 2 and "changed after it was signed" in p for n, p in check.issues)
    assert any(n == 3 and "hash chain is broken" in p for n, p in check.issues)


def test_a_deleted_or_reordered_line_breaks_the_chain(alice, signers):
    lines = _log(alice, STEPS).splitlines(keepends=True)
    deleted = check_log(b"".join([lines[0], *lines[2:]]), signers)
    assert _lines(deleted)[0] == 2 and "hash chain is broken" in deleted.issues[0][1]
    first = check_log(b"".join(lines[1:]), signers)
    assert _lines(first)[0] == 1
    swapped = check_log(b"".join([lines[0], lines[2], lines[1], lines[3]]), signers)
    assert _lines(swapped)[0] == 2


def test_form_signer_and_contradictions(tmp_path, alice, signers):
    data = _log(alice, STEPS)
    spaced = data.replace(b'{"action"', b'{ "action"', 1)
    assert any(n == 1 and "canonical form" in p for n, p in check_log(spaced, signers).issues)
    assert check_log(data[:-1], signers).issues == [(4, "does not end with a newline (cut short, or edited by hand)")]
    assert check_log(b"not json\n", signers).issues == [(1, "is not valid JSON")]
    mallory = ensure_key("mallory@example.com", name="mallory")
    forged = check_log(_log(mallory, STEPS[:1]), signers)
    assert any("not in allowed_signers" in p for _, p in forged.issues)
    unknown = check_log(data, signers, known={A, B}.__contains__)
    assert any(n == 4 and "names commit cccccccccccc" in p for n, p in unknown.issues)
    wrong = check_log(_log(alice, [("canary", "promote", A, None), ("canary", "promote", B, C)]), signers)
    assert any(n == 2 and "ran cccccccccccc… before" in p for n, p in wrong.issues)
    early = check_log(_log(alice, [("canary", "promote", A, None), ("canary", "rollback", B, A)]), signers)
    assert any(n == 2 and "nothing to roll back to" in p for n, p in early.issues)
    bob = ensure_key("bob@example.com", name="bob")
    add_signer(tmp_path / "allowed_signers", bob.principal, bob.public_key)
    entry = sign_deployment(bob, Deployment(env="canary", action="promote", commit=A, previous=None, by="", time="t"))
    claimed = replace(entry, by="alice@example.com")  # the signature covers "by": it no longer verifies
    line = claimed.to_line() + b"\n"
    assert any("changed after it was signed" in p for _, p in
               check_log(line, read_allowed_signers(tmp_path / "allowed_signers")).issues)


def test_environment_names():
    for good in ("canary", "production", "eu-west-2"):
        assert check_env(good) == good
    for bad in ("", "Prod", "2nd", "a b", "-x", "canary/x"):
        with pytest.raises(InvalidInputError, match="cannot name an environment"):
            check_env(bad)


def test_golden_lines(tmp_path):
    """The line format is stable: a fixed key and fixed fields give these exact bytes. A change is a format
    change: bump SCHEMA_VERSION, keep reading the old one, regenerate with CATHREPO_UPDATE_GOLDEN=1."""
    key = _fixed_key(tmp_path, 7, "golden@example.com")
    not_run = {"ran": False, "passed": None, "forced": False, "verdict": "not run", "results": {}}
    steps = [("promote", A, None, "first canary", GATES), ("promote", B, A, "", GATES),
             ("rollback", A, B, "B answers wrongly", not_run)]
    text, last = "", None
    for minute, (action, commit, previous, reason, gates) in enumerate(steps):
        entry = Deployment(env="canary", action=action, commit=commit, previous=previous, by="", reason=reason,
                           time=f"2026-12-02T12:{minute:02d}:00+00:00", gates=gates, prev_sha256=last)
        line = sign_deployment(key, entry).to_line()
        text, last = text + line.decode("utf-8") + "\n", sha256_bytes(line)
    path = GOLDEN / "deployments.jsonl"
    if os.environ.get("CATHREPO_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), "deployments.jsonl changed: a format change"
    assert sorted(json.loads(text.splitlines()[0])) == [
        "action", "by", "commit", "env", "gates", "prev_sha256", "previous", "reason", "schema_version", "signature",
        "time"]
    add_signer(tmp_path / "allowed_signers", key.principal, key.public_key)
    check = check_log(path.read_bytes(), read_allowed_signers(tmp_path / "allowed_signers"))
    assert check.issues == [] and check.current == {"canary": A}


def test_a_revoked_key_signs_lines_only_up_to_its_revocation(tmp_path, alice):
    """Each line is checked at its own ``time``: lines 1-2 (12:00:00, 12:00:01) predate alice's revocation
    at 12:00:01, lines 3-4 do not. A line added by a commit whose allowed_signers already revoked the key
    fails whatever time it claims; a line with no readable time fails too."""
    from datetime import datetime

    from cathrepo.provenance.allowed_signers import Written, revoke_signer

    data = _log(alice, STEPS)
    revoke_signer(tmp_path / "allowed_signers", alice.fingerprint,
                  int(datetime.fromisoformat("2026-12-02T12:00:01+00:00").timestamp()))
    signers = read_allowed_signers(tmp_path / "allowed_signers")
    check = check_log(data, signers)
    assert {n for n, p in check.issues} == {3, 4} and all("revoked" in p for _, p in check.issues), check.issues
    lines = data.split(b"\n")
    then = check_log(data, signers, written=lambda line: Written("d" * 40, signers) if line == lines[0] else None)
    assert [(n, "already revoked in the commit" in p) for n, p in then.issues][0] == (1, True), then.issues
    assert check_log(data, signers, written=lambda line: Written("d" * 40, None)).issues == check.issues

    undated = sign_deployment(alice, Deployment(env="canary", action="promote", commit=A, previous=None, by="",
                                                time="2026-12-02 noon"))
    assert any("not an ISO-8601 time" in p for _, p in check_log(undated.to_line() + b"\n", signers).issues)
