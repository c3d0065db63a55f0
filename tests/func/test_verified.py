"""The verified index (``.git/cathrepo/verified``): what verified once is not checked again, except the
weights; ``--full``, a changed allowed_signers or a damaged index check everything again."""

from __future__ import annotations

import pytest

import cathrepo.provenance.commit_signatures as commit_signatures
import cathrepo.provenance.signing as signing
from cathrepo.bench.scale import build_history
from cathrepo.exceptions import VerificationError
from cathrepo.repo import Repo, layout
from cathrepo.repo.lock import git_dir
from cathrepo.repo.verified import NAME


@pytest.fixture
def repo(tmp_path, tiny_llama):
    _, _, model_dir = tiny_llama
    repo = Repo.init(tmp_path / "r", base=str(model_dir))
    build_history(repo, 3)
    return Repo.open(repo.root)


def _no_signature_checks(monkeypatch):
    """Every signature check fails from here on: what still verifies came from the index."""
    def refuse(*_a, **_k):
        raise VerificationError("signature checked again")

    def bad_commit(*_a, **_k):
        return commit_signatures.CommitSignatureCheck(False, None, None, "checked again", "B")

    monkeypatch.setattr(signing, "verify_payload", refuse)
    monkeypatch.setattr(commit_signatures, "verify_commit_signature", bad_commit)


def _tamper_weights(repo: Repo, index: int) -> None:
    eid = repo.stack().active[index]
    pointer = repo.git.show_file("HEAD", layout.edit_path(eid, layout.WEIGHTS_POINTER))
    obj = repo.storage.object_path(repo.storage.read_pointer(pointer)[0])
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\x01")


def test_what_verified_is_not_checked_again_but_the_weights_are(repo, monkeypatch):
    first = repo.verify()
    assert first.ok and first.commits == 4 and first.edits == 3
    lines = (git_dir(repo.root) / NAME).read_text().splitlines()
    assert sum(line.startswith("commit ") for line in lines) == 4
    assert sum(line.startswith("edit ") for line in lines) == 3
    _no_signature_checks(monkeypatch)
    again = repo.verify()
    assert again.ok and (again.commits, again.edits) == (4, 3)
    assert len(repo.materialize().edits) == 3  # loading reads the index too
    assert not repo.verify(full=True).ok  # --full checks every signature again
    _tamper_weights(repo, 1)
    issues = [str(i) for i in repo.verify().issues]
    assert len(issues) == 1 and repo.stack().active[1] in issues[0] and "sha256" in issues[0]
    with pytest.raises(VerificationError, match="does not verify"):
        repo.materialize()


def test_a_changed_allowed_signers_or_a_damaged_index_verifies_again(repo, monkeypatch):
    assert repo.verify().ok
    index = git_dir(repo.root) / NAME
    index.write_text("garbage\nedit not enough\n" + index.read_text()[:-30])  # damaged: the last line cut
    assert repo.verify().ok  # what no longer parses is verified again and added back
    assert index.read_text().count("\n") >= 7
    signers = repo.git.allowed_signers_file()
    signers.write_text(signers.read_text() + "\n# a comment changes the file\n")
    _no_signature_checks(monkeypatch)
    issues = repo.verify().issues
    assert len(issues) == 4 and all("commit" in str(i) for i in issues)  # commits checked against the new file
