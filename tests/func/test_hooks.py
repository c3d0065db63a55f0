"""cathrepo's git hooks in real repositories: installed, listed and removed; real ``git commit``, ``git
push`` and ``git merge`` run through them (the hooks are subprocesses: they find this Python, recorded
at install, and this checkout through the PYTHONPATH tests/conftest.py sets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cathrepo.exceptions import InvalidInputError
from cathrepo.facts.schema import EditRequest
from cathrepo.repo import Repo, layout
from cathrepo.repo.hooks import BACKUP_SUFFIX, HOOK_NAMES, hooks_dir
from tests.func.test_repo_flow import FACT, OTHER, _tune

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture
def repo(tmp_path, tiny_llama, corpus) -> Repo:
    """A repository on the tiny Llama, tuned for it, without hooks (each test installs them)."""
    repo = Repo.init(tmp_path / "edits", base=str(tiny_llama[2]))
    _tune(repo, corpus)
    return repo


def _git(repo: Repo, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", *args], cwd=repo.root, capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def _commit_blocked(repo: Repo, *paths: str) -> str:
    """Stage ``paths``, try a real ``git commit`` (the hook runs) and return what the hook said."""
    _git(repo, "add", "-f", "--", *paths)
    proc = _git(repo, "commit", "-q", "-m", "should not pass", ok=False)
    assert proc.returncode != 0, "the pre-commit hook let it through"
    _git(repo, "reset", "-q", "--hard", "HEAD")
    return proc.stderr


def test_install_list_uninstall_and_foreign_hooks(repo):
    directory = hooks_dir(repo)
    assert [h.state for h in repo.hooks()] == ["missing"] * 3
    states = repo.hooks(install=True)
    assert [h.state for h in states] == ["current"] * 3 and all(h.python == sys.executable for h in states)
    for name in HOOK_NAMES:
        path = directory / name
        assert os.access(path, os.X_OK) and f"exec \"$CATHREPO_PYTHON\" -m cathrepo hooks run {name}" in path.read_text()
    # an older script of cathrepo's is outdated and brought up to date
    (directory / "pre-push").write_text((directory / "pre-push").read_text() + "# old\n")
    assert repo.hooks()[1].state == "outdated"
    assert repo.hooks(install=True)[1].state == "current"
    # someone else's hook is never replaced without --force, and nothing is installed then
    repo.hooks(uninstall=True)
    (directory / "pre-commit").write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(InvalidInputError, match="not cathrepo's") as info:
        repo.hooks(install=True)
    assert "--force" in (info.value.hint or "")
    assert [h.state for h in repo.hooks()] == ["foreign", "missing", "missing"]
    states = repo.hooks(install=True, force=True)
    assert [h.state for h in states] == ["current"] * 3
    assert (directory / f"pre-commit{BACKUP_SUFFIX}").read_text() == "#!/bin/sh\necho mine\n"
    # uninstall removes cathrepo's and puts the kept hook back
    assert [h.state for h in repo.hooks(uninstall=True)] == ["foreign", "missing", "missing"]
    assert (directory / "pre-commit").read_text() == "#!/bin/sh\necho mine\n"


def test_core_hooks_path_is_where_hooks_go(repo):
    _git(repo, "config", "core.hooksPath", "githooks")
    repo.hooks(install=True)
    assert (repo.root / "githooks" / "pre-commit").is_file()
    assert not (repo.root / ".git" / "hooks" / "pre-commit").exists()


def test_pre_commit_blocks_keys_weights_big_files_and_tampered_edits(repo):
    repo.hooks(install=True)
    (outcome,) = repo.edit([EditRequest(FACT)])  # cathrepo's own commit passes the hook it installed
    eid = outcome.edit_id
    assert repo.git.head() == outcome.commit
    root = repo.root

    (root / "secrets").mkdir()
    (root / "secrets" / "deploy_key").write_text(KEY)
    said = _commit_blocked(repo, "secrets/deploy_key")
    assert "secrets/deploy_key: private key material (OPENSSH private key armour)" in said

    (root / "notes.txt").write_text("a PEM key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n")
    assert "notes.txt: private key material (RSA private key armour)" in _commit_blocked(repo, "notes.txt")

    weights = f"edits/{eid}/delta/adapter_model.safetensors"
    said = _commit_blocked(repo, weights)
    assert f"{weights}: weight file outside DVC" in said
    (root / "extra.bin").write_bytes(b"\0" * 10)
    assert "extra.bin: weight file outside DVC" in _commit_blocked(repo, "extra.bin")

    (root / "big.txt").write_text("x" * (2**20 + 1))
    said = _commit_blocked(repo, "big.txt")
    assert "big.txt: 1.0 MiB is over the 1.0 MiB limit" in said and "max_file_bytes" in said

    record = root / layout.edit_path(eid, layout.RECORD)
    data = json.loads(record.read_text())
    data["fact"]["target_new"] = "Berlin"
    record.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    said = _commit_blocked(repo, layout.edit_path(eid, layout.RECORD))
    assert f"{layout.edit_path(eid, layout.RECORD)}: edit does not verify: hashes to" in said
    assert f"{layout.edit_path(eid, layout.SIGNATURE)}: edit does not verify" in said

    (root / layout.STACK).write_text(json.dumps({"schema_version": 1, "active": [eid, "feedfacefeedface"]}))
    said = _commit_blocked(repo, layout.STACK)
    assert "stack.json: names edit feedfacefeedface, which is not in the index" in said
    (root / layout.STACK).write_text("{not json")
    assert "stack.json: does not parse" in _commit_blocked(repo, layout.STACK)

    # each line is 'path: problem'; a clean commit passes silently, and so do cathrepo's own verbs
    (root / "notes.txt").write_text("hello\n")
    _git(repo, "add", "notes.txt")
    proc = _git(repo, "commit", "-q", "-m", "notes")
    assert proc.stdout == proc.stderr == ""
    assert repo.revert(eid, gate=False).commit == repo.git.head()
    assert repo.check_staged() == []


def test_pre_commit_blocks_tampered_proposals_packs_and_approvals(repo):
    """A staged proposal, pack or approval is checked as verify checks it; cathrepo's own propose,
    consolidate and approve commits pass the hook."""
    from cathrepo.provenance.approvals import approval_name
    from cathrepo.provenance.keys import ensure_key
    from tests.func.test_ci import THIRD

    repo.hooks(install=True)
    (outcome,) = repo.edit([EditRequest(FACT)])
    eid = outcome.edit_id
    repo.edit([EditRequest(THIRD)])
    (pid,) = repo.propose([EditRequest(OTHER)]).ids
    pack = repo.consolidate(strategy="cat", gate=False).pack.id
    bob = ensure_key("bob@example.com", name="id_bob")
    repo.add_key("bob@example.com", bob.public_key)
    approval = repo.approve(eid, key_path=bob.private_path).approval.path
    assert repo.check_staged() == [] and repo.verify().ok
    root = repo.root

    probes = layout.proposal_path(pid, layout.PROBES)
    with (root / probes).open("a") as f:
        f.write('{"prompt": "smuggled in"}\n')
    assert f"{probes}: proposal does not verify: sha256 differs" in _commit_blocked(repo, probes)

    record = layout.proposal_path(pid, layout.PROPOSAL)
    (root / record).write_text((root / record).read_text().replace("guitar", "violin"))
    said = _commit_blocked(repo, record)
    assert f"{record}: proposal does not verify: hashes to" in said
    assert f"{layout.proposal_path(pid, layout.PROPOSAL_SIGNATURE)}: proposal does not verify" in said

    config = layout.pack_path(pack, layout.ADAPTER_CONFIG)
    (root / config).write_text((root / config).read_text().replace('"r"', '"r" ', 1) + " ")
    assert f"{config}: pack does not verify: sha256 differs" in _commit_blocked(repo, config)

    envelope = json.loads((root / approval).read_text())
    sig = envelope["signatures"][0]["sig"]
    envelope["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    (root / approval).write_text(json.dumps(envelope))
    assert f"{approval}: approval does not verify:" in _commit_blocked(repo, approval)
    moved = layout.edit_path(eid, f"approvals/{approval_name(ensure_key('carol@example.com', name='c').fingerprint)}")
    (root / moved).write_text((root / approval).read_text())
    _git(repo, "checkout", "--", approval)
    assert f"{moved}: approval does not verify:" in _commit_blocked(repo, moved)
    assert repo.check_staged() == []


def test_pre_commit_reads_the_index_not_the_work_tree(repo):
    repo.hooks(install=True)
    (repo.root / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n")
    _git(repo, "add", "key.pem")
    (repo.root / "key.pem").write_text("nothing to see\n")  # the work tree no longer has it; the index does
    assert [str(i).split(":")[0] for i in repo.check_staged()] == ["key.pem"]
    _git(repo, "rm", "-q", "-f", "--cached", "key.pem")
    assert repo.check_staged() == []


def test_pre_push_verifies_the_pushed_commits(repo, tmp_path):
    repo.hooks(install=True)
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    _git(repo, "remote", "add", "origin", str(remote))
    (outcome,) = repo.edit([EditRequest(FACT)])
    _git(repo, "push", "-q", "origin", "main")  # every commit signed: passes (the remote had nothing)
    (repo.root / "notes.txt").write_text("hello\n")
    _git(repo, "add", "notes.txt")
    _git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "unsigned")
    unsigned = repo.git.head()
    proc = _git(repo, "push", "-q", "origin", "main", ok=False)
    assert proc.returncode != 0
    assert f"commit {unsigned[:12]}: signature does not verify" in proc.stderr
    assert _git(repo, "ls-remote", str(remote), "main").stdout.split()[0] == outcome.commit
    # signed again: only the new commits are checked, and they pass
    _git(repo, "reset", "-q", "--hard", "HEAD~1")
    (second,) = repo.edit([EditRequest(OTHER)])
    _git(repo, "push", "-q", "origin", "main")
    assert _git(repo, "ls-remote", str(remote), "main").stdout.split()[0] == second.commit
    # a deletion sends nothing and passes
    _git(repo, "push", "-q", "origin", "main:side")
    _git(repo, "push", "-q", "origin", "--delete", "side")


def test_pre_merge_commit_checks_the_merge_result_then_runs_ci(repo):
    repo.hooks(install=True)
    _git(repo, "checkout", "-q", "-b", "side")
    (repo.root / "notes.txt").write_text("hello\n")
    _git(repo, "add", "notes.txt")
    _git(repo, "commit", "-q", "-m", "notes")
    (repo.root / "id_ed25519").write_text(KEY)
    _git(repo, "add", "id_ed25519")
    _git(repo, "commit", "-q", "--no-verify", "-m", "a key, past the pre-commit hook")
    _git(repo, "checkout", "-q", "main")
    (repo.root / "main.txt").write_text("main\n")
    _git(repo, "add", "main.txt")
    _git(repo, "commit", "-q", "-m", "main moves on")
    proc = _git(repo, "merge", "--no-ff", "-q", "-m", "merge side", "side", ok=False)
    assert proc.returncode != 0 and "id_ed25519: private key material" in proc.stderr
    _git(repo, "merge", "--abort")
    _git(repo, "checkout", "-q", "side")
    _git(repo, "rm", "-q", "id_ed25519")
    _git(repo, "commit", "-q", "-m", "remove the key")
    _git(repo, "checkout", "-q", "main")
    proc = _git(repo, "merge", "--no-ff", "-q", "-m", "merge side", "side")
    assert "## cathrepo ci: passed" in proc.stderr  # cathrepo ci --base main ran (git shows a hook's stdout on stderr)
    assert len(repo.git.log(max_count=1)[0].parents) == 2


def test_pre_merge_commit_gates_the_branch_being_merged(repo, monkeypatch):
    """ci runs with --head MERGE_HEAD: the incoming branch's edit is what the merge gates judge."""
    from tests.func.test_ci import _merge_gates

    _merge_gates(repo, ["efficacy", "regression"])
    repo.hooks(install=True)
    repo.checkout("fact", create=True)
    (edit,) = repo.edit([EditRequest(FACT)])
    repo.checkout("main")
    proc = _git(repo, "merge", "--no-ff", "-q", "-m", "merge fact", "fact", ok=False)
    assert "### Merge gates: 1 active edit(s) after the merge, 1 new to `main`" in proc.stderr, proc.stderr
    assert ("## cathrepo ci: passed" in proc.stderr) == (proc.returncode == 0)


def test_cathrepo_merge_commits_through_the_pre_commit_hook(repo):
    """``cathrepo merge`` concludes git's merge with ``git commit``, so pre-commit checks the union (the
    other line's edit, its weights from the DVC cache) and lets it through."""
    repo.hooks(install=True)
    repo.checkout("facts", create=True)
    (theirs,) = repo.edit([EditRequest(FACT)])
    repo.checkout("main")
    (ours,) = repo.edit([EditRequest(OTHER)])
    done = repo.merge("facts", gate=False)
    assert done.commit == repo.git.head() and done.active == (ours.edit_id, theirs.edit_id)
    assert repo.verify().ok
