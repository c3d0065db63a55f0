"""Where things live in an edit repository (DESIGN.md §3) and the active-set file ``stack.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cathrepo.config import CONFIG_NAME
from cathrepo.delta import CONFIG_NAME as ADAPTER_CONFIG_NAME
from cathrepo.delta import WEIGHTS_NAME
from cathrepo.exceptions import VerificationError

CONFIG = CONFIG_NAME
ALLOWED_SIGNERS = "allowed_signers"
STACK = "stack.json"
DEPLOYMENTS = "deployments.jsonl"
EDITS = "edits"
RECORD = "edit.json"
SIGNATURE = "edit.sig"
DELTA_DIR = "delta"
WEIGHTS = f"{DELTA_DIR}/{WEIGHTS_NAME}"
WEIGHTS_POINTER = f"{WEIGHTS}.dvc"
ADAPTER_CONFIG = f"{DELTA_DIR}/{ADAPTER_CONFIG_NAME}"
PROBES = "probes.jsonl"
DATA = "data.jsonl"
#: The files of an edit whose sha256 its record holds (edit.json itself is hashed into the edit id).
EDIT_FILES = (ADAPTER_CONFIG, WEIGHTS, PROBES, DATA)
SCHEMA_VERSION = 1
PROPOSALS = "proposals"
PROPOSAL = "proposal.json"
PROPOSAL_SIGNATURE = "proposal.sig"
PACKS = "packs"
PACK = "pack.json"
PACK_SIGNATURE = "pack.sig"
#: The files of a pack whose sha256 its record holds.
PACK_FILES = (ADAPTER_CONFIG, WEIGHTS)
#: The files of a proposal whose sha256 its record holds.
PROPOSAL_FILES = (PROBES,)


def edit_path(edit_id: str, name: str = "") -> str:
    """Repository-relative POSIX path of an edit's directory or one of its files."""
    return f"{EDITS}/{edit_id}/{name}" if name else f"{EDITS}/{edit_id}"


def proposal_path(proposal_id: str, name: str = "") -> str:
    """Repository-relative POSIX path of a proposal's directory or one of its files."""
    return f"{PROPOSALS}/{proposal_id}/{name}" if name else f"{PROPOSALS}/{proposal_id}"


def pack_path(pack_id: str, name: str = "") -> str:
    """Repository-relative POSIX path of a pack's directory or one of its files."""
    return f"{PACKS}/{pack_id}/{name}" if name else f"{PACKS}/{pack_id}"


@dataclass(frozen=True)
class Stack:
    """The active set: edit ids in the order their deltas are applied, and the packs applied in place of
    the edits they fold (``packs``: pack ids; written only when there are any, so a stack without packs
    keeps the bytes it always had)."""

    active: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, object] = field(default_factory=dict)
    packs: tuple[str, ...] = ()

    def with_edit(self, edit_id: str) -> Stack:
        return Stack((*self.active, edit_id), self.schema_version, self.extra, self.packs)

    def without(self, edit_id: str) -> Stack:
        return Stack(tuple(e for e in self.active if e != edit_id), self.schema_version, self.extra, self.packs)

    def with_packs(self, packs: tuple[str, ...]) -> Stack:
        return Stack(self.active, self.schema_version, self.extra, tuple(packs))

    def merged(self, ancestor: Stack, other: Stack) -> Stack:
        """The three-way merge of this active set with ``other``, from their common ``ancestor``: an edit
        either side removed (reverted) is gone, an edit either side added is active; this side's order
        first, then the edits only ``other`` added, in its order."""
        def keep(e: str, side: Stack) -> bool:
            return e in side.active or e not in ancestor.active

        ours = [e for e in self.active if keep(e, other)]
        theirs = [e for e in other.active if e not in self.active and keep(e, self)]
        return Stack((*ours, *theirs), self.schema_version, self.extra, self.packs)

    def to_bytes(self) -> bytes:
        data = {"schema_version": self.schema_version, "active": list(self.active), **self.extra}
        if self.packs:
            data["packs"] = list(self.packs)
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> Stack:
        if data is None:
            return cls()
        try:
            raw = json.loads(data.decode("utf-8"))
            active = tuple(str(e) for e in raw["active"])
            packs = tuple(str(p) for p in raw.get("packs", ()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise VerificationError(f"{STACK} is malformed.", hint="Restore it with git.") from None
        extra = {k: v for k, v in raw.items() if k not in ("schema_version", "active", "packs")}
        return cls(active, int(raw.get("schema_version", SCHEMA_VERSION)), extra, packs)
