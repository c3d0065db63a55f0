"""Signing keys: created once with safe permissions, fingerprinted like ssh-keygen, never in a work tree."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from cathrepo.exceptions import SigningError
from cathrepo.provenance.keys import config_dir, ensure_key, fingerprint_of, load_key

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")


def test_config_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CATHREPO_CONFIG_DIR", str(tmp_path / "explicit"))
    assert config_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CATHREPO_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "cathrepo"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_dir() == tmp_path / "home" / ".config" / "cathrepo"


def test_new_key_is_private_and_reloads_the_same(isolated_env):
    key = ensure_key("alice@example.com")
    assert key.private_path == isolated_env / "config" / "keys" / "id_ed25519"
    assert stat.S_IMODE(key.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.private_path.parent.stat().st_mode) == 0o700
    assert key.private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.public_key.startswith("ssh-ed25519 AAAA") and key.public_key.endswith(" alice@example.com")
    pub = key.private_path.with_name("id_ed25519.pub").read_text()
    assert pub.strip() == key.public_key
    assert ensure_key("alice@example.com") == key
    assert load_key(key.private_path) == key
    assert not list(key.private_path.parent.glob(".*tmp")), "no temporary files are left behind"


@needs_ssh_keygen
def test_fingerprint_matches_ssh_keygen():
    key = ensure_key("alice@example.com")
    out = subprocess.run(["ssh-keygen", "-lf", str(key.private_path)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[1] == key.fingerprint
    assert fingerprint_of(key.public_key) == key.fingerprint
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key.private_path)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert derived[:2] == key.public_key_bare.split()


def test_refuses_a_key_inside_a_git_work_tree(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path / "project")], check=True)
    monkeypatch.setenv("CATHREPO_CONFIG_DIR", str(tmp_path / "project" / "conf"))
    with pytest.raises(SigningError, match="inside the git work tree"):
        ensure_key("alice@example.com")
    assert not (tmp_path / "project" / "conf").exists()


def test_load_key_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(SigningError, match="No signing key"):
        load_key(tmp_path / "missing")
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key")
    garbage.chmod(0o600)
    with pytest.raises(SigningError, match="not a usable OpenSSH private key"):
        load_key(garbage)
    key = ensure_key("alice@example.com")
    key.private_path.chmod(0o644)
    with pytest.raises(SigningError, match="chmod 600"):
        load_key(key.private_path)


def test_load_key_refuses_non_ed25519(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ecdsa"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(SigningError, match="Ed25519 only"):
        load_key(path)


def test_named_keys_and_bad_principals():
    first, second = ensure_key("alice@example.com"), ensure_key("alice@example.com", name="ci")
    assert first.fingerprint != second.fingerprint
    with pytest.raises(SigningError):
        ensure_key("two words")
    with pytest.raises(SigningError):
        ensure_key("alice@example.com", name="../escape")
