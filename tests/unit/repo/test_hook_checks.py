"""The hook scripts and the pure parts of what they check: one source for the scripts, key armour,
weight paths, git's pre-push lines and ``ls-tree -l`` sizes, the ``[hooks]`` and ``[ci]`` tables."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from cathrepo.config import HooksConfig, dump_config, parse_config
from cathrepo.exceptions import ConfigError, InvalidInputError
from cathrepo.repo.git_records import parse_ls_tree_sizes
from cathrepo.repo.hook_checks import KEY_ARMOUR, ZERO, PushUpdate, parse_push_lines, weight_problem
from cathrepo.repo.hooks import HOOK_NAMES, PYTHON_LINE, render, template

PROJECT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_the_top_level_hooks_are_the_packaged_ones(name):
    """cathrepo/data/hooks/ is the source (it ships in the wheel); hooks/ beside .github/ is its copy."""
    top = PROJECT / "hooks" / name
    assert top.read_text() == template(name), f"hooks/{name} differs: cp cathrepo/data/hooks/{name} hooks/"
    assert top.stat().st_mode & 0o111


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_a_rendered_hook_is_posix_sh_that_runs_the_recorded_python(name, tmp_path):
    text = render(name, "/opt/my env/bin/python")
    assert PYTHON_LINE not in text and f"CATHREPO_PYTHON={shlex.quote('/opt/my env/bin/python')}" in text
    assert subprocess.run(["sh", "-n", "-c", text]).returncode == 0
    # the recorded Python gone and no cathrepo on PATH: the hook says so and stops the commit
    script = tmp_path / name
    script.write_text(render(name, str(tmp_path / "gone")))
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and "cannot find cathrepo" in proc.stderr
    with pytest.raises(InvalidInputError, match="no 'post-commit' hook"):
        template("post-commit")


@pytest.mark.parametrize("text, kind", [
    (b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl", "OPENSSH"),
    (b"x\n-----BEGIN RSA PRIVATE KEY-----\n", "RSA"),
    (b"-----BEGIN EC PRIVATE KEY-----", "EC"),
    (b"-----BEGIN PRIVATE KEY-----", ""),
    (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", "ENCRYPTED"),
])
def test_private_key_armour_is_found(text, kind):
    match = KEY_ARMOUR.search(text)
    assert match is not None and match.group(1).decode().strip() == kind


def test_public_keys_and_certificates_are_not_private_keys():
    for text in (b"-----BEGIN PUBLIC KEY-----", b"ssh-ed25519 AAAAC3Nza alice@example.com",
                 b"-----BEGIN CERTIFICATE-----", b"BEGIN PRIVATE KEY"):
        assert KEY_ARMOUR.search(text) is None


def test_weight_paths():
    eid = "0123456789abcdef"
    for path in ("model.safetensors", "a/b/pytorch_model.bin", "x.PT", "ckpt/last.ckpt", "m.gguf",
                 f"edits/{eid}/delta/adapter_model.safetensors", f"edits/{eid}/delta/notes.txt"):
        assert weight_problem(path), path
    for path in (f"edits/{eid}/delta/adapter_config.json", f"edits/{eid}/delta/adapter_model.safetensors.dvc",
                 f"edits/{eid}/delta/.gitignore", f"edits/{eid}/edit.json", "stack.json", "binary.txt"):
        assert weight_problem(path) is None, path


def test_push_lines():
    sha = "a" * 40
    text = f"refs/heads/main {sha} refs/heads/main {ZERO}\n\n(delete) {ZERO} refs/heads/old {sha}\n"
    assert parse_push_lines(text) == [PushUpdate("refs/heads/main", sha, "refs/heads/main", ZERO),
                                      PushUpdate("(delete)", ZERO, "refs/heads/old", sha)]
    with pytest.raises(InvalidInputError, match="line 1"):
        parse_push_lines("refs/heads/main abc\n")


def test_ls_tree_sizes():
    oid = "b" * 40
    text = "\x00".join([f"100644 blob {oid}     123\ta b.txt", f"040000 tree {'c' * 40}       -\tdir",
                        f"160000 commit {'d' * 40}       -\tsub", f"120000 blob {oid}       7\tlink", ""])
    assert parse_ls_tree_sizes(text) == {"a b.txt": (oid, 123), "link": (oid, 7)}


BASE = """
schema_version = 2

[base]
name = "tiny"
source = "/models/tiny"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"""


def test_hooks_and_ci_tables_default_round_trip_and_validate():
    config = parse_config(BASE)
    assert config.hooks.max_file_bytes == 2**20 and config.ci.install == "" and config.ci.torch == "torch"
    config = parse_config(BASE + '\n[hooks]\nmax_file_bytes = 5000\n\n[ci]\ninstall = "cathrepo==0.1.0"\n')
    assert config.hooks == HooksConfig(max_file_bytes=5000) and config.ci.install == "cathrepo==0.1.0"
    assert parse_config(dump_config(config)) == config
    with pytest.raises(ConfigError, match="max_file_bytes"):
        parse_config(BASE + "\n[hooks]\nmax_file_bytes = 0\n")
