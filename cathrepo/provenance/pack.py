"""A pack (``packs/<id>/pack.json``): several active edits folded into one delta by a merge strategy.

Consolidation keeps the edits themselves (their records, probes and deltas stay in the repository and
in the active set); the pack is what is applied in their place. Its record names the edits it folds, in
order, the strategy (``cat`` exactly, ``svd:R``, ``ties``, ``dare`` approximately), each module's rank and
relative truncation error, and the sha256 of its files; like an edit record it is canonical JSON whose
sha256 prefix is its id, signed in ``pack.sig``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cathrepo.provenance.manifest import canonical_json, edit_id, record_from, record_json

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PackRecord:
    """What a pack folds and how.

    Attributes:
        edits: the edit ids folded, in stack order.
        strategy: the merge strategy spec that built it (``cat``, ``svd:8``, ``ties:0.2``...).
        ranks, errors: per module, the pack's rank and the relative Frobenius error against the exact sum.
        base_model: {"name", "sha256"} of the base the deltas apply to.
        files: path (relative to the pack directory) -> sha256.
        author, created: who folded it, when.
    """

    edits: tuple[str, ...]
    strategy: str
    ranks: Mapping[str, int]
    errors: Mapping[str, float]
    base_model: Mapping[str, str]
    files: Mapping[str, str]
    author: str
    created: str
    gates: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["edits"] = list(self.edits)
        return data

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def id(self) -> str:
        return edit_id(self.to_bytes())

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "pack.json") -> PackRecord:
        record = record_from(cls, record_json(data, what=what, newest=SCHEMA_VERSION), what=what)
        object.__setattr__(record, "edits", tuple(record.edits))
        return record
