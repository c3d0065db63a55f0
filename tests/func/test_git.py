"""The git adapter against real git: signed commits, signature checks, trailers, history, undo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cathrepo.exceptions import GitError, InvalidInputError, NotARepositoryError, NotFoundError
from cathrepo.provenance.keys import ensure_key
from cathrepo.repo.git import Git


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def _commit_file(git: Git, name: str, text: str, message: str, **kwargs) -> str:
    (git.root / name).parent.mkdir(parents=True, exist_ok=True)
    (git.root / name).write_text(text)
    git.add([name])
    return git.commit(message, **kwargs)


def test_signed_commit_verifies_with_git_itself(signed_git, signing_key):
    sha = _commit_file(signed_git, "a.txt", "1", "First")
    result = _git(signed_git.root, "verify-commit", sha)
    assert result.returncode == 0, result.stderr
    check = signed_git.verify_commit(sha)
    assert check.ok and check.principal == "alice@example.com"
    assert check.fingerprint == signing_key.fingerprint
    assert "Good" in check.detail
    config = _git(signed_git.root, "config", "--local", "--list").stdout
    for line in ("gpg.format=ssh", "commit.gpgsign=true", "tag.gpgsign=true",
                 f"user.signingkey={signing_key.private_path}",
                 f"gpg.ssh.allowedsignersfile={signed_git.root / 'allowed_signers'}"):
        assert line in config


def test_unsigned_commit_is_not_ok(signed_git):
    (signed_git.root / "a.txt").write_text("1")
    signed_git.add(["a.txt"])
    subprocess.run(["git", "-c", "commit.gpgsign=false", "commit", "-qm", "unsigned"], cwd=signed_git.root,
                   check=True)
    check = signed_git.verify_commit("HEAD")
    assert not check.ok and check.principal is None and "not signed" in check.detail
    assert _git(signed_git.root, "verify-commit", "HEAD").returncode != 0


def test_commit_by_a_key_outside_allowed_signers_is_not_ok(signed_git):
    mallory = ensure_key("mallory@example.com", name="mallory")
    (signed_git.root / "a.txt").write_text("1")
    signed_git.add(["a.txt"])
    subprocess.run(["git", "-c", f"user.signingkey={mallory.private_path}", "commit", "-qm", "by mallory"],
                   cwd=signed_git.root, check=True)
    check = signed_git.verify_commit("HEAD")
    assert not check.ok
    assert check.fingerprint == mallory.fingerprint and check.principal is None
    assert "not in allowed_signers" in check.detail
    assert _git(signed_git.root, "verify-commit", "HEAD").returncode != 0


def test_verify_against_another_allowed_signers_file(signed_git, tmp_path):
    sha = _commit_file(signed_git, "a.txt", "1", "First")
    empty = tmp_path / "nobody"
    empty.write_text("")
    assert not signed_git.verify_commit(sha, allowed_signers=empty).ok
    absent = signed_git.verify_commit(sha, allowed_signers=tmp_path / "absent")
    assert not absent.ok and "does not exist" in absent.detail
    assert signed_git.verify_commit(sha).ok


def test_identity_is_derived_on_a_machine_without_one(no_git_identity, tmp_path, signing_key):
    git = Git.init(tmp_path / "repo")
    assert git.config_get("user.email") is None
    git.configure_signing(signing_key, git.root / "allowed_signers")
    assert git.config_get("user.email") == "alice@example.com"
    assert git.config_get("user.name") == "alice"
    (git.root / "allowed_signers").write_text(f"{signing_key.principal} {signing_key.public_key_bare}\n")
    git.add(["allowed_signers"])
    sha = git.commit("First")
    assert git.log()[0].author_email == "alice@example.com"
    assert git.verify_commit(sha).ok


def test_existing_identity_is_kept(signed_git):
    assert _git(signed_git.root, "config", "--local", "--get", "user.email").stdout == ""
    assert signed_git.config_get("user.email") == "test@example.com"


def test_trailers_and_body_round_trip_through_log(signed_git):
    first = _commit_file(signed_git, "a.txt", "1", "Setup")
    trailers = {"Cathrepo-Edit": "e-3f2a", "Cathrepo-Delta-Sha256": "ab" * 32, "Cathrepo-Gates": "pass 7/7"}
    sha = _commit_file(signed_git, "b.txt", "2", "Edit: Eiffel Tower -> Rome\n\nWhy: a user correction.\n\n"
                       "Second paragraph.", trailers=trailers)
    newest, oldest, root = signed_git.log()
    assert newest.sha == sha and oldest.sha == first
    assert newest.subject == "Edit: Eiffel Tower -> Rome"
    assert newest.body == "Why: a user correction.\n\nSecond paragraph."
    assert newest.trailers == trailers
    assert newest.parents == (first,) and oldest.parents == (root.sha,) and root.parents == ()
    assert newest.author_name == "Test User" and newest.author_email == "test@example.com"
    assert newest.date[:2] == "20" and "T" in newest.date
    assert oldest.trailers == {}
    assert [c.sha for c in signed_git.log(paths=["a.txt"])] == [first]
    assert [c.sha for c in signed_git.log(max_count=1)] == [sha]
    assert signed_git.rev_list() == [sha, first, root.sha]
    (light, *_) = signed_git.log(trailer_keys=["Cathrepo-Edit", "Cathrepo-Gates"])  # what log shows, only
    assert light.trailers == {"Cathrepo-Edit": "e-3f2a", "Cathrepo-Gates": "pass 7/7"} and light.body == ""
    assert (light.sha, light.subject, light.parents) == (sha, newest.subject, newest.parents)
    with pytest.raises(InvalidInputError):
        signed_git.commit("x", {"Bad Key": "v"})


def test_reads_old_revisions_without_checkout(signed_git):
    first = _commit_file(signed_git, "edits/e1/edit.json", "v1", "One")
    second = _commit_file(signed_git, "edits/e1/edit.json", "v2", "Two")
    _commit_file(signed_git, "edits/e2/edit.json", "x", "Three")
    assert signed_git.show_file(first, "edits/e1/edit.json") == b"v1"
    assert signed_git.show_file("HEAD~1", "edits/e1/edit.json") == b"v2"
    assert signed_git.show_file(first, "edits/e2/edit.json") is None
    assert signed_git.show_file(first, "edits/e1") is None
    assert signed_git.list_files(second, "edits") == ["edits/e1/edit.json"]
    assert signed_git.list_files("HEAD", "edits/") == ["edits/e1/edit.json", "edits/e2/edit.json"]
    assert signed_git.list_files("HEAD") == ["allowed_signers", "edits/e1/edit.json", "edits/e2/edit.json"]
    assert signed_git.rev_parse(first[:8]) == first
    assert signed_git.current_branch() == "main"
    with pytest.raises(NotFoundError, match="No commit named 'nope'"):
        signed_git.show_file("nope", "edits/e1/edit.json")
    with pytest.raises(NotFoundError):
        signed_git.rev_parse("--all")
    # one object reader serves every read, and it sees commits made after it started
    third = _commit_file(signed_git, "edits/e3/edit.json", "new", "Four")
    assert signed_git.show_file(third, "edits/e3/edit.json") == b"new"
    assert signed_git.show_file("HEAD", "edits/e3/edit.json") == b"new"
    with pytest.raises(NotFoundError, match="No commit named"):
        signed_git.show_file("0" * 40, "edits/e1/edit.json")
    signed_git.close()
    assert signed_git.show_file(first, "edits/e1/edit.json") == b"v1"  # reading again starts it anew


def test_empty_repository(tmp_path):
    git = Git.init(tmp_path / "repo")
    assert git.head() is None and git.log() == [] and git.rev_list() == []
    assert git.current_branch() == "main"
    assert git.status_porcelain() == []


def test_not_a_repository(tmp_path):
    with pytest.raises(NotARepositoryError, match="not a git repository"):
        Git(tmp_path)
    git = Git.init(tmp_path / "repo")
    (git.root / "sub").mkdir()
    with pytest.raises(NotARepositoryError):
        Git(git.root / "sub")
    assert Git(git.root).root == git.root.resolve()


def test_nothing_to_commit_says_so(signed_git):
    _commit_file(signed_git, "a.txt", "1", "First")
    with pytest.raises(GitError, match="nothing to commit"):
        signed_git.commit("Again")
    sha = signed_git.commit("Marker", allow_empty=True)
    assert signed_git.verify_commit(sha).ok



def test_unstage_keeps_files(signed_git, tmp_path):
    git = Git.init(tmp_path / "plain")
    (git.root / "a.txt").write_text("1")
    git.add(["a.txt"])
    git.unstage(["a.txt"])  # on a repository without commits
    assert git.status_porcelain() == ["?? a.txt"]
    (signed_git.root / "b.txt").write_text("2")
    signed_git.add(["b.txt"])
    signed_git.unstage(["b.txt"])
    assert signed_git.status_porcelain() == ["?? b.txt"] and (signed_git.root / "b.txt").exists()


def test_git_error_carries_git_message_and_next_step(signed_git):
    with pytest.raises(GitError) as info:
        signed_git.add(["does-not-exist"])
    assert "did not match any files" in str(info.value)
    assert info.value.hint
