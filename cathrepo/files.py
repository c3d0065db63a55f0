"""Files on the ground floor: per-user directories, atomic writes, file hashes (used by every stage).

A reader must never see half a key, half a signature or half a cached statistic: each write goes to a
temporary file in the same directory, is flushed to disk, and is renamed over the target in one step
(a fixed temporary name would let two writers clobber each other's half-written file).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

#: The XDG base directory of each per-user directory, and its fallback under the home directory.
_XDG = {"cache": ("XDG_CACHE_HOME", ".cache"), "config": ("XDG_CONFIG_HOME", ".config"),
        "data": ("XDG_DATA_HOME", ".local/share")}


def user_dir(purpose: str) -> Path:
    """cathrepo's per-user ``cache``, ``config`` or ``data`` directory.

    ``$CATHREPO_<KIND>_DIR`` wins (tests and CI point it at a scratch directory), then
    ``$XDG_<KIND>_HOME/cathrepo``, then the XDG default under the home directory.
    """
    explicit = os.environ.get(f"CATHREPO_{purpose.upper()}_DIR")
    if explicit:
        return Path(explicit).expanduser()
    env, default = _XDG[purpose]
    base = os.environ.get(env) or str(Path.home() / default)
    return Path(base).expanduser() / "cathrepo"


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True,
                 make_parents: bool = False) -> bool:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    Args:
        path: the target file.
        data: the full new content.
        mode: permission bits of the new file, set before any byte is written (0o600 for keys).
        overwrite: when False the file is only created if absent (a hard link, atomic even between
            processes) and False is returned if another writer got there first.
        make_parents: create the target's directory first (caches); else it must exist.

    Returns:
        True when ``path`` now holds ``data``; False only with ``overwrite=False`` and an existing file.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, digest: Any = None) -> str:
    """The sha256 of a file's bytes, read in 4 MiB chunks; fed into ``digest`` when given (to hash
    several files as one), whose hex digest is returned."""
    digest = digest if digest is not None else hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
