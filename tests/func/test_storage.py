"""The DVC adapter against real DVC: init, add, push, pull, fetch by hash, status, failure cleanup."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from cathrepo.exceptions import NotARepositoryError, StorageError
from cathrepo.repo.storage import _SIMPLE_POINTER, Storage, data_dir

WEIGHTS = "edits/e1/delta/adapter_model.safetensors"


def _write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _drop(path: Path) -> None:
    path.chmod(0o644)  # DVC makes cache objects read-only
    path.unlink()


def _remote_object(storage: Storage, md5: str) -> Path:
    return Path(storage.remote_url()) / "files" / "md5" / md5[:2] / md5[2:]


def test_init_configures_an_offline_local_remote(signed_git, isolated_env):
    storage = Storage.init(signed_git.root)
    assert {p.relative_to(signed_git.root).as_posix() for p in storage.created_files} == {
        ".dvc/config", ".dvc/.gitignore", ".dvcignore"}
    assert all(p.exists() for p in storage.created_files)
    config = (signed_git.root / ".dvc" / "config").read_text()
    assert "analytics = False" in config and "autostage = False" in config and "remote = origin" in config
    remote = Path(storage.remote_url())
    assert remote.parent == data_dir() / "remotes" and remote.is_dir()
    assert remote.is_relative_to(isolated_env / "data")
    with pytest.raises(StorageError, match="already set up"):
        Storage.init(signed_git.root)


def test_init_with_explicit_remote_and_open(signed_git, tmp_path):
    storage = Storage.init(signed_git.root, remote_url=str(tmp_path / "team-remote"))
    assert storage.root == signed_git.root
    assert Storage(signed_git.root).remote_url() == str(tmp_path / "team-remote")
    with pytest.raises(NotARepositoryError):
        Storage(tmp_path)


def test_add_push_pull_round_trip(storage_repo):
    git, storage = storage_repo
    data = os.urandom(4096)
    weights = _write(git.root, WEIGHTS, data)
    stored = storage.add(weights)
    assert stored.md5 == hashlib.md5(data).hexdigest() and stored.size == 4096
    assert stored.pointer_path == git.root / (WEIGHTS + ".dvc")
    assert set(stored.git_files) == {stored.pointer_path, weights.parent / ".gitignore"}
    assert storage.read_pointer(stored.pointer_path.read_bytes()) == (stored.md5, 4096, weights.name)
    assert _SIMPLE_POINTER.match(stored.pointer_path.read_text()), "DVC's own pointer takes the fast path"
    assert storage.object_path(stored.md5).read_bytes() == data
    git.add(list(stored.git_files))
    git.commit("Add weights")
    assert git.status_porcelain() == [], "git ignores the weights; only the pointer is tracked"
    assert storage.status()["not_pushed"] == [WEIGHTS]
    assert storage.push() == 1
    assert storage.status()["not_pushed"] == []
    assert _remote_object(storage, stored.md5).read_bytes() == data
    weights.unlink()
    _drop(storage.object_path(stored.md5))
    assert storage.status()["not_in_cache"] == [WEIGHTS]
    assert storage.pull() == 1
    assert weights.read_bytes() == data
    assert storage.status() == {"remote": storage.remote_url(), "modified": [], "not_in_cache": [],
                                "not_pushed": [], "missing": []}


def test_old_revision_weights_are_read_by_hash(storage_repo):
    """An old edit's weights come back from its pointer at that revision, without a checkout."""
    git, storage = storage_repo
    old = storage.add(_write(git.root, WEIGHTS, b"version one"))
    git.add(list(old.git_files))
    first = git.commit("v1")
    new = storage.add(_write(git.root, WEIGHTS, b"version two"))
    git.add(list(new.git_files))
    git.commit("v2")
    assert storage.push(all_revisions=False) == 1  # DVC's default: only what the work tree points at
    assert storage.push() == 1  # the rest of history: the old object
    _drop(storage.object_path(old.md5))
    md5, size, _ = storage.read_pointer(git.show_file(first, WEIGHTS + ".dvc"))
    assert (md5, size) == (old.md5, len(b"version one"))
    assert storage.fetch_object(md5).read_bytes() == b"version one"


def test_fetch_object_falls_back_to_the_remote(storage_repo):
    git, storage = storage_repo
    stored = storage.add(_write(git.root, WEIGHTS, b"weights"))
    storage.push([stored.pointer_path])
    _drop(storage.object_path(stored.md5))
    path = storage.fetch_object(stored.md5)
    assert path == storage.object_path(stored.md5) and path.read_bytes() == b"weights"
    _drop(path)
    _drop(_remote_object(storage, stored.md5))
    with pytest.raises(StorageError, match=f"Weight object {stored.md5} is neither in the local cache nor on"
                                           " the remote") as info:
        storage.fetch_object(stored.md5)
    assert "cathrepo pull" in str(info.value)


def test_fetch_object_refuses_a_corrupt_remote_copy(storage_repo):
    git, storage = storage_repo
    stored = storage.add(_write(git.root, WEIGHTS, b"weights"))
    storage.push()
    _drop(storage.object_path(stored.md5))
    remote = _remote_object(storage, stored.md5)
    remote.chmod(0o644)
    remote.write_bytes(b"tampered")
    with pytest.raises(StorageError, match=f"Weight object {stored.md5} .* corrupt"):
        storage.fetch_object(stored.md5)
    assert not storage.object_path(stored.md5).exists()


def test_bad_ids_and_pointers(storage_repo):
    _, storage = storage_repo
    with pytest.raises(StorageError, match="not a DVC object id"):
        storage.object_path("../../etc/passwd")
    with pytest.raises(StorageError, match="malformed"):
        Storage.read_pointer(b"outs: []\n")
    with pytest.raises(StorageError, match="malformed"):
        Storage.read_pointer(b"\xff\xfe")
    with pytest.raises(StorageError, match="malformed"):  # a refusal is not remembered as an answer
        Storage.read_pointer(b"outs: []\n")


def test_a_pointer_is_parsed_once_per_content(monkeypatch):
    import dvc.utils.serialize

    pointer = b"outs:\n- md5: '0123456789abcdef0123456789abcdef'\n  size: 12\n  hash: md5\n  path: w.bin\n"
    assert not _SIMPLE_POINTER.match(pointer.decode())  # DVC's parser reads this one
    first = Storage.read_pointer(pointer)
    monkeypatch.setattr(dvc.utils.serialize, "parse_yaml", lambda *_a, **_k: pytest.fail("parsed again"))
    assert Storage.read_pointer(bytes(pointer)) == first == ("0123456789abcdef0123456789abcdef", 12, "w.bin")


def test_a_pointer_in_another_yaml_form_goes_through_dvc():
    """Quoted values and extra keys are YAML DVC reads; the fast path leaves them to DVC's parser."""
    pointer = b'outs:\n- md5: "0123456789abcdef0123456789abcdef"\n  size: 12\n  cache: true\n  path: "w x.bin"\n'
    assert not _SIMPLE_POINTER.match(pointer.decode())
    assert Storage.read_pointer(pointer) == ("0123456789abcdef0123456789abcdef", 12, "w x.bin")


def test_failed_add_leaves_no_half_written_pointer(storage_repo, monkeypatch):
    git, storage = storage_repo
    from dvc.stage import Stage

    weights = _write(git.root, WEIGHTS, b"weights")
    ignore = weights.parent / ".gitignore"
    ignore.write_text("/something-else\n")

    def broken_dump(self, *args, **kwargs):
        Path(self.path).write_text("outs:\n- md5: 12")  # a crash in the middle of the write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Stage, "dump", broken_dump)
    with pytest.raises(StorageError, match="No space left on device"):
        storage.add(weights)
    assert not (git.root / (WEIGHTS + ".dvc")).exists()
    assert ignore.read_text() == "/something-else\n"


def test_nothing_touches_the_network(signed_git, monkeypatch):
    """init, add, push, status, fetch and pull with a local remote never open an internet socket."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError("network disabled in this test")
        return real_connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    storage = Storage.init(signed_git.root)
    stored = storage.add(_write(signed_git.root, WEIGHTS, b"weights"))
    storage.status()
    assert storage.push() == 1
    _drop(storage.object_path(stored.md5))
    storage.fetch_object(stored.md5)
    storage.pull()
    assert attempts == []
