"""The deployment log (``deployments.jsonl``): which commit went to which environment, when, by whom.

One JSON object per line, append-only (DESIGN.md §3). Each line is the entry's fields in compact
canonical JSON (sorted keys, no spaces) plus ``signature``: an envelope like ``edit.sig``'s, in its own
namespace ``cathrepo-deployment``, over the canonical JSON of every other field. Those fields include
``prev_sha256``, the sha256 of the line before it (null on the first line), so each signature also
covers the chain: a line changed, deleted, inserted or reordered breaks the chain, or a signature, at
that line. Replaying the log gives each environment's current commit: a promotion pushes a commit onto
the environment's history, a rollback pops the last one, so two rollbacks go two steps back.

This module knows the format and the keys; the repository reads the file at a revision and commits it
(:mod:`cathrepo.repo.promote`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from cathrepo.exceptions import CathrepoError, InvalidInputError, VerificationError
from cathrepo.files import sha256_bytes
from cathrepo.provenance.allowed_signers import AllowedSigner, Written
from cathrepo.provenance.keys import SigningKey
from cathrepo.provenance.signing import sign_payload, verify_payload

SCHEMA_VERSION = 1
NAMESPACE = "cathrepo-deployment"
ACTIONS = ("promote", "rollback")
ENV_NAME = re.compile(r"[a-z][a-z0-9-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # git's sha1 and sha256 object ids
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("schema_version", "env", "action", "commit", "previous", "by", "time", "reason", "gates",
           "prev_sha256", "signature")


def check_env(name: str) -> str:
    """``name`` if it can name an environment (``canary``, ``production``, ``eu-west-2``)."""
    if not ENV_NAME.fullmatch(name or ""):
        raise InvalidInputError(f"'{name}' cannot name an environment.",
                                hint="Use lowercase letters, digits and '-', starting with a letter (canary, "
                                     "production).")
    return name


def compact_json(data: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a line (and of what its signature covers): sorted keys, no spaces, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Deployment:
    """One line of the log.

    Attributes:
        env: the environment.
        action: ``promote`` or ``rollback``.
        commit: the full id of the commit the environment runs from this entry on.
        previous: the commit it ran before (None when it ran nothing).
        by: the principal that signed the entry.
        time: when, UTC ISO-8601.
        reason: the user's ``--reason`` text.
        gates: the promote-stage gate summary (``ran``, ``passed``, ``forced``, ``verdict``, ``results``:
            gate name -> pass/FAIL/skip); ``ran`` false when none ran (``--no-gate``, a rollback).
        prev_sha256: the sha256 of the line before this one (without its newline); None on line 1.
        signature: the envelope over :meth:`payload`; None until signed.
        extra: fields a newer cathrepo of the same schema wrote: kept, since the signature covers them.
    """

    env: str
    action: str
    commit: str
    previous: str | None
    by: str
    time: str
    reason: str = ""
    gates: Mapping[str, Any] = field(default_factory=dict)
    prev_sha256: str | None = None
    schema_version: int = SCHEMA_VERSION
    signature: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """Every field but the signature: what the signature covers."""
        return {**self.extra, "schema_version": self.schema_version, "env": self.env, "action": self.action,
                "commit": self.commit, "previous": self.previous, "by": self.by, "time": self.time,
                "reason": self.reason, "gates": dict(self.gates), "prev_sha256": self.prev_sha256}

    def payload(self) -> bytes:
        return compact_json(self.fields())

    @property
    def seconds(self) -> int | None:
        """``time`` in seconds since the epoch: when the entry was signed (None when it is no ISO-8601
        time with a zone)."""
        try:
            when = datetime.fromisoformat(self.time)
        except ValueError:
            return None
        return int(when.timestamp()) if when.tzinfo is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {**self.fields(), "signature": dict(self.signature) if self.signature is not None else None}

    def to_line(self) -> bytes:
        """The line as written to the file, without its newline."""
        if self.signature is None:
            raise VerificationError("A deployment entry is written only once it is signed.")
        return compact_json(self.to_dict())

    @classmethod
    def from_line(cls, line: bytes) -> Deployment:
        """Parse one line (no newline).

        Raises:
            VerificationError: the line is not JSON or lacks a field of the format.
        """
        try:
            raw = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise VerificationError("is not valid JSON") from None
        if not isinstance(raw, dict):
            raise VerificationError("is not a JSON object")
        version = raw.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise VerificationError(f"has schema_version {version}, written by a newer cathrepo",
                                    hint="Upgrade cathrepo to read it.")
        _expect(version == SCHEMA_VERSION, f"schema_version {version!r}, expected {SCHEMA_VERSION}")
        _expect(isinstance(raw.get("env"), str) and bool(ENV_NAME.fullmatch(raw["env"])), "no valid env")
        _expect(raw.get("action") in ACTIONS, f"action {raw.get('action')!r} is not one of {', '.join(ACTIONS)}")
        _expect(_is_commit(raw.get("commit")), "commit is not a full commit id")
        _expect(raw.get("previous") is None or _is_commit(raw["previous"]), "previous is not a full commit id")
        _expect(all(isinstance(raw.get(k), str) for k in ("by", "time", "reason")), "by, time or reason is missing")
        _expect(isinstance(raw.get("gates"), dict), "gates is missing")
        prev = raw.get("prev_sha256")
        _expect(prev is None or (isinstance(prev, str) and bool(_HEX64.fullmatch(prev))), "prev_sha256 is not a sha256")
        _expect(isinstance(raw.get("signature"), dict), "signature is missing")
        return cls(env=raw["env"], action=raw["action"], commit=raw["commit"], previous=raw.get("previous"),
                   by=raw["by"], time=raw["time"], reason=raw["reason"], gates=raw["gates"], prev_sha256=prev,
                   schema_version=SCHEMA_VERSION, signature=raw["signature"],
                   extra={k: v for k, v in raw.items() if k not in _FIELDS})


def _is_commit(value: Any) -> bool:
    return isinstance(value, str) and bool(_COMMIT.fullmatch(value))


def _expect(condition: bool, why: str) -> None:
    if not condition:
        raise VerificationError(f"is malformed ({why})")


def sign_deployment(key: SigningKey, entry: Deployment) -> Deployment:
    """``entry`` signed by ``key``, with ``by`` set to the key's principal."""
    entry = replace(entry, by=key.principal, signature=None)
    return replace(entry, signature=sign_payload(key, entry.payload(), namespace=NAMESPACE))


@dataclass
class LogCheck:
    """What reading a log found.

    Attributes:
        entries: every entry that parsed, in order (a bad signature still parses: see ``issues``).
        issues: (line number, problem) for everything that does not verify; empty when the log is sound.
        history: per environment, the commits it was promoted to that no rollback has taken back, oldest
            first: the last is what it runs now.
        last_sha256: the sha256 of the last line (what the next line's ``prev_sha256`` must be).
    """

    entries: list[Deployment] = field(default_factory=list)
    issues: list[tuple[int, str]] = field(default_factory=list)
    history: dict[str, list[str]] = field(default_factory=dict)
    last_sha256: str | None = None

    @property
    def current(self) -> dict[str, str]:
        """Each environment's current commit (environments rolled back to nothing are left out)."""
        return {env: stack[-1] for env, stack in sorted(self.history.items()) if stack}

    def rollback_target(self, env: str) -> tuple[str, str]:
        """(the commit ``env`` runs now, the one a rollback returns it to).

        Raises:
            InvalidInputError: when ``env`` runs nothing, or nothing was promoted to it before.
        """
        stack = self.history.get(env, [])
        if not stack:
            raise InvalidInputError(f"Nothing was ever promoted to '{env}' (or it was rolled back to nothing), "
                                    "so there is nothing to roll back.",
                                    hint="See the environments with 'cathrepo deployments'.")
        if len(stack) < 2:
            raise InvalidInputError(f"'{env}' runs {stack[-1][:12]}, the first commit promoted to it, so there "
                                    "is nothing to roll back to.",
                                    hint="Promote the commit it should run instead: cathrepo promote REV --to "
                                         f"{env}.")
        return stack[-1], stack[-2]


def check_log(data: bytes, signers: list[AllowedSigner], *, known: Callable[[str], bool] | None = None,
              written: Callable[[bytes], Written | None] | None = None) -> LogCheck:
    """Read and verify a whole log: each line's form, the hash chain, each signature (by an allowed
    signer valid at the entry's ``time``, as the principal in ``by``), the commits it names (``known``:
    whether a commit is in the history), and that each entry follows from the ones before it.

    Args:
        written: the commit that added a line and its ``allowed_signers``, when known: a key that commit
            had already revoked does not sign the line, whatever ``time`` it claims.
    """
    check = LogCheck()
    lines = data.split(b"\n")
    if lines[-1]:
        check.issues.append((len(lines), "does not end with a newline (cut short, or edited by hand)"))
    else:
        lines.pop()
    for number, line in enumerate(lines, start=1):
        for problem in _check_line(check, line, signers, known, written(line) if written is not None else None):
            check.issues.append((number, problem))
        check.last_sha256 = sha256_bytes(line)
    return check


def _check_line(check: LogCheck, line: bytes, signers: list[AllowedSigner],
                known: Callable[[str], bool] | None, then: Written | None) -> list[str]:
    """The problems of one line; the entry joins ``check`` when it parses."""
    try:
        entry = Deployment.from_line(line)
    except VerificationError as exc:
        return [exc.message]
    problems = []
    if entry.prev_sha256 != check.last_sha256:
        said = f"follows a line with sha256 {entry.prev_sha256[:12]}…" if entry.prev_sha256 else "is the first line"
        found = f"the line before it hashes to {check.last_sha256[:12]}…" if check.last_sha256 else "it is the first"
        problems.append(f"the hash chain is broken: it says it {said}, but {found} (a line was deleted, inserted, "
                        "reordered or changed)")
    if entry.to_line() != line:
        problems.append("is not in the log's canonical form (changed by hand)")
    at = entry.seconds
    if at is None:
        problems.append(f"time {entry.time!r} is not an ISO-8601 time with a zone")
    try:
        signer = verify_payload(dict(entry.signature or {}), entry.payload(), signers, namespace=NAMESPACE,
                                what="the entry", at=at, then=then)
        if signer != entry.by:
            problems.append(f"is signed by {signer}, but says it was made by {entry.by}")
    except CathrepoError as exc:
        problems.append(exc.message)
    for name, sha in (("commit", entry.commit), ("previous", entry.previous)):
        if sha is not None and known is not None and not known(sha):
            problems.append(f"names {name} {sha[:12]}, which is not in the history")
    problems.extend(_replay(check, entry))
    check.entries.append(entry)
    return problems


def _replay(check: LogCheck, entry: Deployment) -> list[str]:
    """Apply ``entry`` to the environments' histories; what contradicts the entries before it."""
    stack = check.history.setdefault(entry.env, [])
    current = stack[-1] if stack else None
    problems = []
    if entry.previous != current:
        problems.append(f"says {entry.env} ran {_short(entry.previous)} before, but the entries before it say "
                        f"{_short(current)}")
    if entry.action == "promote":
        stack.append(entry.commit)
    elif len(stack) < 2:
        problems.append(f"rolls {entry.env} back, but it had nothing to roll back to")
        stack[:] = [entry.commit]
    else:
        stack.pop()
        if stack[-1] != entry.commit:
            problems.append(f"rolls {entry.env} back to {entry.commit[:12]}, but the deployment before was "
                            f"{stack[-1][:12]}")
    return problems


def _short(sha: str | None) -> str:
    return "nothing" if sha is None else sha[:12] + "…"
