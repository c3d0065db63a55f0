"""Registries for the pluggable families: edit methods, gates, merge strategies.

Each family is a base class plus a :class:`Registry`. Entries need a non-empty ``name``; registering a
name twice is refused; a failed lookup suggests the closest names ("Did you mean: rome?"); third-party
plug-ins arrive through the entry-point group given to the registry (``cathrepo.edit_methods`` …).
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Generic, TypeVar

from cathrepo.exceptions import CathrepoError, UnknownNameError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → class table for one pluggable family.

    Args:
        what: what the entries are, for messages ("edit method", "gate").
        entry_point_group: the ``importlib.metadata`` group scanned once for plug-ins.
        builtins: built-in entry name → the module that registers it, imported when that name is first
            looked up (so an edit imports ROME's modules, not LoRA's; listing every name imports all).
    """

    def __init__(self, what: str, entry_point_group: str, builtins: Mapping[str, str] | None = None) -> None:
        self.what = what
        self.entry_point_group = entry_point_group
        self._builtins = dict(builtins or {})
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, obj: T) -> T:
        """Add ``obj`` under its ``name`` attribute; usable as a class decorator."""
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise CathrepoError(f"Cannot register {obj!r} as a {self.what}: it has no 'name'.")
        existing = self._entries.get(name)
        if existing is not None and existing is not obj:
            raise CathrepoError(
                f"A {self.what} named '{name}' is already registered ({existing!r}).",
                hint="Pick another name for the plug-in.",
            )
        self._entries[name] = obj
        return obj

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in dict.fromkeys(self._builtins.values()):
            importlib.import_module(module)
        for ep in metadata.entry_points(group=self.entry_point_group):
            try:
                self.register(ep.load())
            except Exception as exc:  # a broken plug-in must not break the tool
                log.warning("Skipping %s plug-in %s: %s", self.what, ep.name, exc)

    def get(self, name: str) -> T:
        """Return the entry called ``name`` or raise with the closest names."""
        if name not in self._entries and name in self._builtins:
            importlib.import_module(self._builtins[name])
        if name not in self._entries:
            self._load()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f"Did you mean: {', '.join(close)}?" if close else f"Known: {', '.join(self.names())}."
            raise UnknownNameError(f"Unknown {self.what} '{name}'.", hint=hint) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
