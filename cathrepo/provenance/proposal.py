"""A proposal (``proposals/<id>/proposal.json``): a fact someone asks the model to learn, before any weights.

A team proposes facts on a branch; a reviewer reads the proposal as a small text diff in the pull
request, and ``cathrepo ci`` realises it (attribution → edit → gates) and, when asked, commits the edit,
whose record names the proposal it came from. Like an edit record, a proposal is canonical JSON whose
first 16 hex digits of sha256 are its id, signed in ``proposal.sig``; ``files`` holds the sha256 of its
probes, so the signature covers them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cathrepo.exceptions import VerificationError
from cathrepo.provenance.manifest import canonical_json, edit_id, record_from, record_json

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ProposalRecord:
    """What a proposal asks for and where it comes from.

    Attributes:
        facts: the facts one edit is to write (several for a batch or a passage), as Fact dicts.
        source, author, created, confidence, risk: the provenance the realised edit will carry.
        method: the edit method the proposer asks for (None: the repository's default).
        params: method parameter overrides the proposer asks for.
        passage: the passage the facts were synthesized from, if any.
        base_model: {"name", "sha256"} of the base the proposal was made on.
        files: path (relative to the proposal directory) -> sha256 (the probes).
        topics: what the facts are about (written only when there are any).
    """

    facts: tuple[Mapping[str, Any], ...]
    source: str | None
    author: str
    created: str
    confidence: float
    risk: str
    base_model: Mapping[str, str]
    files: Mapping[str, str] = field(default_factory=dict)
    method: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    passage: Mapping[str, Any] | None = None
    topics: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["facts"] = [dict(f) for f in self.facts]
        data["topics"] = list(self.topics)
        if not self.topics:
            del data["topics"]
        for optional in ("method", "passage"):
            if data[optional] is None:
                del data[optional]
        return data

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def id(self) -> str:
        return edit_id(self.to_bytes())

    @property
    def summary(self) -> str:
        """One line: "<prompt> -> <target>" (and how many more facts)."""
        first = self.facts[0] if self.facts else {}
        more = f" (+{len(self.facts) - 1} more)" if len(self.facts) > 1 else ""
        return f"{first.get('prompt', '?')} -> {first.get('target_new', '?')}{more}"

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "proposal.json") -> ProposalRecord:
        record = record_from(cls, record_json(data, what=what, newest=SCHEMA_VERSION), what=what)
        if not record.facts:
            raise VerificationError(f"{what} proposes no fact.")
        object.__setattr__(record, "facts", tuple(record.facts))
        object.__setattr__(record, "topics", tuple(record.topics))
        return record
