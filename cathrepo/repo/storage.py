"""The DVC adapter: the one module that imports DVC.

Edit weights (``edits/<id>/delta/adapter_model.safetensors``) are content-addressed by DVC: git holds
only the small ``.dvc`` pointer (and the ``.gitignore`` DVC writes beside it), the bytes live in the
local cache and on a remote. By default the remote is a local directory under the user's data
directory, so a fresh repository works offline; a team points it at S3/GCS/SSH later with DVC's own
configuration. :meth:`Storage.fetch_object` reads an old revision's weights by hash, without a checkout.

DVC is imported inside methods (it takes about half a second); its own console handlers are removed so
that its messages go through ``logging`` like cathrepo's and the library stays quiet. Analytics and
the update check are off: nothing here uses the network unless a remote says so.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import NotARepositoryError, StorageError
from cathrepo.files import user_dir

if TYPE_CHECKING:
    from dvc.repo import Repo as DvcRepo

log = logging.getLogger(__name__)

REMOTE_NAME = "origin"
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_PULL_HINT = "Run 'cathrepo pull' where the weights were pushed, or check the remote with 'dvc remote list'."


def data_dir() -> Path:
    """Where cathrepo keeps per-user data such as default remotes.

    ``$CATHREPO_DATA_DIR`` wins, then ``$XDG_DATA_HOME/cathrepo``, then ``~/.local/share/cathrepo``.
    """
    return user_dir("data")


def _import_dvc() -> type[DvcRepo]:
    """Import DVC and route its console output into ``logging`` (idempotent)."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.logger import LoggerHandler
    from dvc.repo import Repo
    from dvc.ui import ui

    for name in ("dvc", "dvc_objects", "dvc_data"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, LoggerHandler):
                logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    ui.error_console.quiet = True  # no spinners from the library; the CLI draws its own progress
    return Repo


@dataclass(frozen=True)
class StoredObject:
    """A file handed to DVC.

    Attributes:
        pointer_path: the ``.dvc`` file git tracks instead of the weights.
        md5: the object id (DVC 3's md5 of the file's bytes).
        size: bytes.
        git_files: what must be ``git add``-ed: the pointer and the ``.gitignore`` beside it.
    """

    pointer_path: Path
    md5: str
    size: int
    git_files: tuple[Path, ...]


def _dvc_error(action: str, exc: BaseException, hint: str) -> StorageError:
    text = str(exc).strip().splitlines()
    return StorageError(f"DVC could not {action}: {text[0] if text else type(exc).__name__}.", hint=hint)


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Storage:
    """The DVC side of an edit repository.

    Args:
        root: the repository's top directory (it holds ``.dvc/``).

    Raises:
        NotARepositoryError: when ``root`` has no ``.dvc`` directory.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root).resolve()
        if not (self._root / ".dvc").is_dir():
            raise NotARepositoryError(f"{self._root} has no DVC storage (.dvc is missing).",
                                      hint="Run 'cathrepo init' to create a repository.")
        self._cache_root: Path | None = None
        self.created_files: tuple[Path, ...] = ()

    @classmethod
    def init(cls, root: Path, remote_url: str | None = None) -> Storage:
        """Set up DVC inside the existing git work tree ``root``.

        Analytics and auto-staging are turned off and a default remote named ``origin`` is added: a
        local directory (``remote_url`` or a fresh ``data_dir()/remotes/<id>``). DVC itself stages its
        new files in git; :attr:`created_files` lists them for the caller's commit (and undo).

        Raises:
            StorageError: ``root`` is not a git work tree, DVC is already set up, or DVC failed (what it
                had created is removed again).
        """
        repo_cls = _import_dvc()
        from dvc.exceptions import DvcException

        root = Path(root).resolve()
        if (root / ".dvc").exists():
            raise StorageError(f"DVC is already set up in {root}.", hint="Open it with Storage(root).")
        url = remote_url or str(data_dir() / "remotes" / uuid.uuid4().hex)
        created = (root / ".dvc" / "config", root / ".dvc" / ".gitignore", root / ".dvcignore")
        try:
            dvc_repo = repo_cls.init(str(root))
            try:
                with dvc_repo.config.edit() as conf:
                    conf["core"]["analytics"] = False
                    conf["core"]["check_update"] = False
                    conf["core"]["autostage"] = False
                    conf["core"]["remote"] = REMOTE_NAME
                    conf["remote"][REMOTE_NAME] = {"url": url}
            finally:
                dvc_repo.close()
            if "://" not in url:
                Path(url).mkdir(parents=True, exist_ok=True)
        except (DvcException, OSError) as exc:
            shutil.rmtree(root / ".dvc", ignore_errors=True)
            (root / ".dvcignore").unlink(missing_ok=True)
            raise _dvc_error(f"initialise storage in {root}", exc,
                             "Check that the directory is a git work tree and writable.") from None
        storage = cls(root)
        storage.created_files = created
        log.info("DVC storage initialised in %s with remote %s.", root, url)
        return storage

    @property
    def root(self) -> Path:
        return self._root

    @contextmanager
    def _open(self) -> Iterator[DvcRepo]:
        repo_cls = _import_dvc()
        with repo_cls(str(self._root)) as repo:
            yield repo

    def remote_url(self) -> str:
        """The URL (a path, for the default local remote) of the default remote."""
        with self._open() as repo:
            name = repo.config["core"].get("remote")
            remote = repo.config["remote"].get(name or "", {})
        if not remote.get("url"):
            raise StorageError(f"{self._root} has no default DVC remote.",
                               hint="Add one with: dvc remote add -d origin <url>")
        return str(remote["url"])

    # --- objects ---------------------------------------------------------------------------------

    def add(self, path: Path) -> StoredObject:
        """Hand ``path`` to DVC: move its bytes into the cache and write ``<path>.dvc``.

        If DVC fails midway, the pointer and ``.gitignore`` are put back as they were, so no
        half-written pointer is left for a commit to pick up.
        """
        from dvc.exceptions import DvcException

        path = (self._root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
        if not path.is_file():
            raise StorageError(f"Cannot store {path}: it is not a file.", hint="Write the weights first.")
        pointer, ignore = path.with_name(path.name + ".dvc"), path.parent / ".gitignore"
        saved = {p: (p.read_bytes() if p.exists() else None) for p in (pointer, ignore)}
        try:
            with self._open() as repo:
                stages = repo.add([str(path)])
            out = stages[0].outs[0]
            md5, size = str(out.hash_info.value), int(out.meta.size)
        except (DvcException, OSError, IndexError) as exc:
            for file, content in saved.items():
                if content is None:
                    file.unlink(missing_ok=True)
                else:
                    file.write_bytes(content)
            raise _dvc_error(f"store {path.name}", exc, "Check free disk space and the .dvc/cache permissions.") \
                from None
        return StoredObject(pointer_path=pointer, md5=md5, size=size, git_files=(pointer, ignore))

    def cache_root(self) -> Path:
        """The local cache's object directory (``.dvc/cache/files/md5`` unless configured otherwise)."""
        if self._cache_root is None:
            with self._open() as repo:
                self._cache_root = Path(repo.cache.local.path)
        return self._cache_root

    def object_path(self, md5: str) -> Path:
        """Where the object ``md5`` lies (or would lie) in the local cache."""
        if not _MD5.match(md5):
            raise StorageError(f"'{md5}' is not a DVC object id.", hint="Object ids are 32 lowercase hex digits.")
        return self.cache_root() / md5[:2] / md5[2:]

    @staticmethod
    def read_pointer(pointer_bytes: bytes) -> tuple[str, int, str]:
        """Parse a ``.dvc`` pointer into (md5, size, path relative to the pointer's directory).

        Works on bytes read from any revision (``git show``), so an old edit's weights can be found
        without checking it out. Parsed once per distinct content in a process (DVC's YAML parser takes
        about 3 ms a pointer, and loading the active edits reads every one of them on every command).
        """
        return _parse_pointer(bytes(pointer_bytes))

    def fetch_object(self, md5: str) -> Path:
        """The local cache path of object ``md5``, pulled from the default remote if needed.

        Raises:
            StorageError: naming the object when neither the cache nor the remote has it, or when the
                remote's copy does not hash to ``md5``.
        """
        path = self.object_path(md5)
        if path.is_file():
            return path
        from dvc.exceptions import DvcException
        from dvc_data.hashfile.hash_info import HashInfo

        try:
            with self._open() as repo:
                repo.cloud.pull([HashInfo("md5", md5)])
        except DvcException as exc:
            raise _dvc_error(f"fetch weight object {md5}", exc, _PULL_HINT) from None
        if not path.is_file():
            raise StorageError(
                f"Weight object {md5} is neither in the local cache nor on the remote {self.remote_url()} "
                "(or the remote's copy is corrupt: DVC checks each object's hash and drops bad copies).",
                hint=_PULL_HINT,
            )
        if _file_md5(path) != md5:
            path.unlink(missing_ok=True)
            raise StorageError(f"The remote's copy of weight object {md5} is corrupt (its md5 differs).",
                               hint="Push the object again from a clone that has a good copy.")
        return path

    def sync_workspace(self, pointers: Sequence[str], stale: str) -> tuple[int, int]:
        """Make the work tree's weight files match the committed ``pointers`` (repository-relative
        ``.dvc`` paths) after git switched branches or merged: each pointer's file is put in place from
        the cache when missing, and a file matching the glob ``stale`` whose pointer is gone is removed when
        the cache holds its bytes (nothing that exists only in the work tree is deleted). Returns
        (restored, removed)."""
        import shutil

        wanted = {str(Path(p).with_suffix("")) for p in pointers}
        restored = removed = 0
        for pointer in pointers:
            target = self._root / Path(pointer).with_suffix("")
            if not target.exists():
                md5, _, _ = _parse_pointer((self._root / pointer).read_bytes())
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.fetch_object(md5), target)
                restored += 1
        for path in sorted(self._root.glob(stale)):
            rel = str(path.relative_to(self._root))
            if rel in wanted or not self.object_path(_file_md5(path)).is_file():
                continue
            path.unlink()
            removed += 1
            for folder in path.relative_to(self._root).parents:
                full = self._root / folder
                if folder == Path(".") or not full.is_dir() or any(full.iterdir()):
                    break
                full.rmdir()
        return restored, removed

    # --- remote transfers ------------------------------------------------------------------------

    def _targets(self, targets: Sequence[Path] | None) -> list[str] | None:
        return None if targets is None else [str((self._root / t).resolve()) for t in targets]

    def push(self, targets: Sequence[Path] | None = None, *, all_revisions: bool = True) -> int:
        """Upload weight objects to the default remote; return how many were transferred.

        Args:
            targets: pointers or data paths to push; None for everything.
            all_revisions: with no targets, push the objects of every commit, not only the work tree's
                (DVC's default). A reverted edit or an old revision must stay materializable on
                another machine, so history counts.
        """
        from dvc.exceptions import DvcException

        everything = targets is None and all_revisions
        try:
            with self._open() as repo:
                return int(repo.push(targets=self._targets(targets), all_commits=everything))
        except DvcException as exc:
            raise _dvc_error("push weights", exc, f"Check that the remote {self.remote_url()} is writable.") \
                from None

    def pull(self, targets: Sequence[Path] | None = None) -> int:
        """Download and check out the weights of ``targets`` (all when None); return files fetched."""
        from dvc.exceptions import DvcException

        try:
            with self._open() as repo:
                result = repo.pull(targets=self._targets(targets))
        except DvcException as exc:
            raise _dvc_error("pull weights", exc, _PULL_HINT) from None
        return int(result.get("stats", {}).get("fetched", 0))

    def status(self) -> dict[str, Any]:
        """What is out of sync, as lists of workspace paths (relative to the root).

        Keys: ``remote`` (url), ``modified`` (workspace differs from its pointer), ``not_in_cache``
        (pointer's object is not in the local cache), ``not_pushed`` (in the cache, not on the
        remote), ``missing`` (neither in the cache nor on the remote).
        """
        from dvc.exceptions import DvcException

        summary: dict[str, Any] = {"remote": self.remote_url(), "modified": [], "not_in_cache": [],
                                   "not_pushed": [], "missing": []}
        try:
            with self._open() as repo:
                local = repo.status()
                cloud = repo.status(cloud=True)
        except DvcException as exc:
            raise _dvc_error("compute the storage status", exc, "Run 'dvc status -c' to see more.") from None
        for entries in local.values():
            for entry in entries if isinstance(entries, list) else []:
                for out_path, state in (entry.get("changed outs", {}) if isinstance(entry, dict) else {}).items():
                    key = "not_in_cache" if state == "not in cache" else "modified"
                    summary[key].append(self._rel(out_path))
        for out_path, state in cloud.items():
            if state == "new":
                summary["not_pushed"].append(self._rel(out_path))
            elif state == "missing":
                summary["missing"].append(self._rel(out_path))
            elif state == "deleted" and self._rel(out_path) not in summary["not_in_cache"]:
                summary["not_in_cache"].append(self._rel(out_path))
        return summary

    def _rel(self, path: str) -> str:
        candidate = Path(path)
        if candidate.is_absolute():
            try:
                return candidate.relative_to(self._root).as_posix()
            except ValueError:
                return path
        return candidate.as_posix()


#: The one form DVC writes a single-file pointer in; read without DVC's YAML parser (3 ms a pointer, and
#: importing DVC half a second: at 10,000 edits, verify and materialize would spend 30 s parsing).
_SIMPLE_POINTER = re.compile(r"\Aouts:\n- md5: ([0-9a-f]{32})\n  size: ([0-9]+)\n(?:  hash: md5\n)?"
                             r"  path: ([A-Za-z0-9_.][A-Za-z0-9_./-]*)\n\Z")


@functools.lru_cache(maxsize=65536)
def _parse_pointer(pointer_bytes: bytes) -> tuple[str, int, str]:
    """:meth:`Storage.read_pointer`, memoised on the pointer's bytes (a malformed one raises every time).
    A pointer in the form DVC writes is matched directly; any other goes through DVC's own parser."""
    simple = _SIMPLE_POINTER.match(pointer_bytes.decode("utf-8", errors="replace"))
    if simple:
        return simple.group(1), int(simple.group(2)), simple.group(3)
    _import_dvc()
    from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml

    try:
        data = parse_yaml(pointer_bytes.decode("utf-8"), ".dvc")
        out = data["outs"][0]
        md5, size, rel = str(out["md5"]), int(out.get("size", -1)), str(out["path"])
    except (YAMLFileCorruptedError, UnicodeDecodeError, KeyError, IndexError, TypeError, ValueError):
        raise StorageError("A .dvc pointer is malformed (expected outs: [{md5, size, path}]).",
                           hint="Restore it from the repository with git.") from None
    if not _MD5.match(md5):
        raise StorageError(f"The .dvc pointer names '{md5}', which is not an md5 object id.",
                           hint="Restore it from the repository with git.")
    return md5, size, rel
