"""Atomic file writes shared by the provenance modules (keys, allowed signers, envelopes).

A reader must never see half a key or half a signature file: each write goes to a temporary file in
the same directory, is flushed to disk, and is renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> bool:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    Args:
        path: the target file; its directory must exist.
        data: the full new content.
        mode: permission bits of the new file, set before any byte is written (0o600 for keys).
        overwrite: when False the file is only created if absent (a hard link, atomic even between
            processes) and False is returned if another writer got there first.

    Returns:
        True when ``path`` now holds ``data``; False only with ``overwrite=False`` and an existing file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
