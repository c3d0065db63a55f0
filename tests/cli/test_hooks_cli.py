"""``cathrepo hooks …`` and ``cathrepo init``'s hooks through the real command line."""

from __future__ import annotations

import json
import subprocess

from cathrepo.repo import Repo
from tests.cli.runner import cathrepo

ZERO = "0" * 40


def test_init_installs_the_hooks_and_list_install_uninstall_say_what_they_did(repo_dir, tmp_path, tiny_llama):
    listed = cathrepo("hooks", "list", cwd=repo_dir).stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [["pre-commit", "installed"], ["pre-push", "installed"],
                                                    ["pre-merge-commit", "installed"]]
    assert all(str(repo_dir / ".git" / "hooks") in line for line in listed)

    out = cathrepo("hooks", "uninstall", cwd=repo_dir).stdout
    assert out.count("not installed") == 3
    hook = repo_dir / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\nexit 0\n")
    refused = cathrepo("hooks", "install", cwd=repo_dir, ok=False)
    assert refused.returncode == 2 and "pre-push is not cathrepo's; nothing was installed" in refused.stderr
    assert "cathrepo hooks install --force" in refused.stderr
    assert not (repo_dir / ".git" / "hooks" / "pre-commit").exists()
    out = cathrepo("hooks", "install", "--force", cwd=repo_dir).stdout
    assert out.count(" installed ") == 3
    data = json.loads(cathrepo("hooks", "list", "--json", cwd=repo_dir).stdout)
    assert [h["state"] for h in data] == ["current"] * 3 and data[1]["backup"].endswith("pre-push.pre-cathrepo")

    made = cathrepo("init", str(tmp_path / "bare"), "--base", str(tiny_llama[2]), "--no-hooks",
                    "--install-source", "cathrepo @ git+https://example.org/cathrepo.git@v0.1.0", cwd=tmp_path)
    assert "  git hooks   none" in made.stdout
    assert "  CI installs cathrepo @ git+https://example.org/cathrepo.git@v0.1.0" in made.stdout
    assert not (tmp_path / "bare" / ".github" / "cathrepo").exists(), "no wheel when a source is given"


def test_run_prints_one_line_per_problem_and_exits_1(repo_dir, tmp_path):
    clean = cathrepo("hooks", "run", "pre-commit", cwd=repo_dir)
    assert clean.stdout == clean.stderr == ""
    other = tmp_path / "plain"  # a plain git repository sharing the hooks (core.hooksPath) is let through
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    skipped = cathrepo("hooks", "run", "pre-commit", cwd=other)
    assert skipped.stderr == "cathrepo hooks: pre-commit skipped (not a cathrepo repository).\n"
    (repo_dir / "id_rsa").write_text("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n")
    (repo_dir / "model.pt").write_bytes(b"\0")
    subprocess.run(["git", "add", "id_rsa", "model.pt"], cwd=repo_dir, check=True)
    run = cathrepo("hooks", "run", "pre-commit", cwd=repo_dir, ok=False)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        "id_rsa: private key material (RSA private key armour): keys never enter the repository; unstage it "
        "(git rm --cached) and replace the key",
        "model.pt: weight file outside DVC: git holds only its .dvc pointer (cathrepo edit writes both; by hand: "
        "dvc add, then stage the .dvc file)"]


def test_run_pre_push_reads_gits_lines_on_stdin(repo_dir):
    repo = Repo.open(repo_dir)
    head = repo.git.head()
    assert cathrepo("hooks", "run", "pre-push", "origin", "url", cwd=repo_dir,
                    stdin=f"refs/heads/main {head} refs/heads/main {ZERO}\n").stderr == ""
    (repo_dir / "notes.txt").write_text("x\n")
    repo.git.add(["notes.txt"])
    repo.git.run(["-c", "commit.gpgsign=false", "commit", "-q", "--no-verify", "-m", "unsigned"])
    unsigned = repo.git.head()
    line = f"refs/heads/main {unsigned} refs/heads/main {head}\n"
    run = cathrepo("hooks", "run", "pre-push", "origin", "url", cwd=repo_dir, stdin=line, ok=False)
    assert run.returncode == 1 and run.stderr.startswith(f"commit {unsigned[:12]}: signature does not verify")
    deletion = f"(delete) {ZERO} refs/heads/main {unsigned}\n"
    assert cathrepo("hooks", "run", "pre-push", "origin", "url", cwd=repo_dir, stdin=deletion).returncode == 0


def test_pre_merge_commit_skips_the_merge_gates_when_there_is_no_ci_command(repo_dir, monkeypatch):
    from cathrepo import cli

    run = cathrepo("hooks", "run", "pre-merge-commit", cwd=repo_dir)  # not inside a git merge
    assert run.stderr == "cathrepo hooks: merge gates skipped (git did not name the one branch being merged).\n"
    monkeypatch.setenv("GIT_REFLOG_ACTION", "merge main")
    run = cathrepo("hooks", "run", "pre-merge-commit", cwd=repo_dir)
    assert run.stdout.startswith("## cathrepo ci: passed")
    monkeypatch.delitem(cli.COMMANDS, "ci")
    run = cathrepo("hooks", "run", "pre-merge-commit", cwd=repo_dir)
    assert run.stdout == "" and run.stderr == "cathrepo hooks: merge gates skipped (this cathrepo has no 'ci' command).\n"


def test_the_branch_a_git_merge_merges_is_read_from_its_reflog_action():
    from cathrepo.cli.commands.hooks import merged_rev

    assert merged_rev("merge side") == "side"
    assert merged_rev("merge origin/feature") == "origin/feature"
    assert merged_rev("merge a b") is None  # octopus: no one branch to gate
    assert merged_rev("pull --rebase") is None and merged_rev("") is None
