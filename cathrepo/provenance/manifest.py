"""The edit record (``edits/<id>/edit.json``): what was changed, how, by whom, and the hash of every file.

The record is written as canonical JSON (sorted keys, two-space indent, trailing newline) and the edit
id is the first 16 hex digits of the sha256 of exactly those bytes, like a git object id: any change to
the record changes the id, so ``verify`` can recompute it. Every other file of the edit (the delta, its
config, the probes, the training data) is named in ``files`` with its sha256, so signing the record
(``edit.sig``) signs the whole edit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from cathrepo.exceptions import VerificationError
from cathrepo.files import sha256_bytes

SCHEMA_VERSION = 3  # 2: the fact's "kind" (edit/forget) is named "action"; 3: stack_before replaces computed_on
ID_LENGTH = 16
_R = TypeVar("_R")

def canonical_json(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")



def stack_digest(active: tuple[str, ...] | list[str]) -> str:
    """The sha256 of an active set's edit ids in order (one per line), as records name it."""
    return sha256_bytes("\n".join(active).encode("utf-8"))


def stack_summary(active: tuple[str, ...] | list[str], restrain: str = "", factor: float = 1.0) -> dict[str, Any]:
    """A record's ``stack_before``: how many edits, their digest, the last, and, when the repository
    restrains its stack (``[stack] restrain``), how: the edit was computed on and gated against that."""
    out: dict[str, Any] = {"count": len(active), "sha256": stack_digest(active), "last": active[-1] if active else None}
    if restrain:
        out["restrain"] = {"rule": restrain, "factor": factor}
    return out


def record_json(data: bytes, *, what: str, newest: int) -> dict[str, Any]:
    """The JSON object of a record file (edit, proposal, pack), refused when it is not one or when its
    ``schema_version`` is newer than ``newest``."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{what} is not valid JSON: {exc}.") from None
    if not isinstance(raw, dict):
        raise VerificationError(f"{what} is not a JSON object.")
    version = raw.get("schema_version", 1)
    if version > newest:
        raise VerificationError(f"{what} has schema_version {version}; this cathrepo reads up to {newest}.",
                                hint="Upgrade cathrepo.")
    return raw


def record_from(cls: type[_R], raw: Mapping[str, Any], *, what: str) -> _R:
    """``cls`` (a record dataclass) from ``raw``, unknown keys dropped, a missing field named."""
    names = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    try:
        return cls(**{k: v for k, v in raw.items() if k in names})
    except TypeError as exc:
        raise VerificationError(f"{what} is missing fields: {exc}.") from None


def edit_id(record_bytes: bytes) -> str:
    """The edit id of a record's canonical bytes."""
    return sha256_bytes(record_bytes)[:ID_LENGTH]


@dataclass(frozen=True)
class EditRecord:
    """The manifest of one edit (DESIGN.md §3).

    Attributes:
        action: "edit" or "forget".
        fact: the fact as a dict (cathrepo.facts.schema.Fact.to_dict).
        method: edit method name; params: its parameters.
        site: where the delta was written; attribution: how the site was chosen (if it was).
        info: numbers from the computation (losses, steps, seconds).
        source, author, created, confidence, risk: the provenance manifest.
        base_model: {"name", "sha256"} of the base the delta applies to.
        stack_before: the active set this edit was computed on: {"count", "sha256", "last"} (the number of
            edits, :func:`stack_digest` of their ids in order, the last of them). The ids themselves are the
            parent commit's ``stack.json``; a record does not repeat them, so it stays the same size at
            the ten-thousandth edit as at the first. ``restrain`` ({"rule", "factor"}) is there when the
            repository applied that stack restrained (``[stack] restrain``).
        computed_on: schema 1-2 only: the ids of that active set, listed (read, never written).
        files: path (relative to the edit directory) -> sha256.
        gates: gate results at commit time.
        versions: library versions that produced it.
        proposal: the id of the proposal (``proposals/<id>/``) this edit realises, if it came from one.
        topics: what the fact is about (``--topic``); with ``[risk]`` of ``cathrepo.toml`` they raise the
            edit's tier (written only when there are any, so older records keep their bytes and ids).
    """

    action: str
    fact: Mapping[str, Any]
    method: str
    params: Mapping[str, Any]
    site: Mapping[str, Any]
    source: str | None
    author: str
    created: str
    confidence: float
    risk: str
    base_model: Mapping[str, str]
    files: Mapping[str, str]
    gates: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    attribution: Mapping[str, Any] | None = None
    stack_before: Mapping[str, Any] | None = None
    computed_on: tuple[str, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)
    facts: tuple[Mapping[str, Any], ...] = ()
    passage: Mapping[str, Any] | None = None
    proposal: str | None = None
    topics: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["computed_on"] = list(self.computed_on)
        data["topics"] = list(self.topics)
        if not self.topics:
            del data["topics"]
        del data["computed_on" if self.schema_version >= 3 else "stack_before"]  # the bytes a schema had
        data["facts"] = [dict(f) for f in self.facts]
        if not self.facts:
            del data["facts"]
        for optional in ("passage", "proposal"):  # absent unless set: older records keep their bytes and ids
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
        """One line: "<prompt> -> <target>" (or "forget: ...")."""
        if self.passage is not None:
            title = self.passage.get("title") or " ".join(str(self.passage.get("text", "")).split()[:6])
            return f"passage: {title} ({len(self.facts) or 1} probe(s))"
        fact = self.fact
        arrow = f"{fact.get('prompt', '?')} -> {fact.get('target_new', '?')}"
        return arrow if self.action == "edit" else f"forget: {arrow}"

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "edit.json") -> EditRecord:
        raw = record_json(data, what=what, newest=SCHEMA_VERSION)
        if raw.get("schema_version", 1) < 2 and "kind" in raw:  # schema 1 named the action "kind"
            raw["action"] = raw.pop("kind")
        record = record_from(cls, raw, what=what)
        object.__setattr__(record, "computed_on", tuple(record.computed_on))
        object.__setattr__(record, "facts", tuple(record.facts))
        object.__setattr__(record, "topics", tuple(record.topics))
        return record


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a delta's numbers (recorded in every edit): the ones that
    compute it, tokenize its prompts, store it, and Python itself."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("cathrepo", "torch", "transformers", "tokenizers", "peft", "safetensors", "numpy",
                 "accelerate", "huggingface_hub", "gguf", "lm_eval"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def numerics(model: object) -> dict[str, object]:
    """What else a delta's numbers depend on: device, weight dtype and thread count (cathrepo computes
    edits and gates in float32 on every CPU, so whether the CPU has fast bfloat16 does not enter)."""
    import torch

    param = next(model.parameters())  # type: ignore[attr-defined]
    return {"device": str(param.device), "dtype": str(param.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled()}
