"""What cathrepo's git hooks check (``cathrepo hooks run``): the staged index and the pushed commits.

A tree about to enter history, compared with the one it follows, must hold:

1. no private key material in any file it adds or changes (OpenSSH or PEM private-key armour);
2. no weight file outside DVC: no ``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt`` or
   ``*.gguf`` blob, nothing under ``edits/<id>/delta/`` but ``adapter_config.json``, ``.dvc`` pointers
   and the ``.gitignore`` DVC writes, and no file over ``[hooks] max_file_bytes`` of ``cathrepo.toml``
   (the policy of the line it joins: HEAD's, the remote's) unless it is a ``.dvc`` pointer;
3. every edit directory it adds or changes verifies: ``edit.json`` hashes to the directory's name,
   ``edit.sig`` by a signer of the tree's own ``allowed_signers``, and every file the record names
   hashes as recorded, the weights read from the DVC cache through the tree's pointer
   (:func:`~cathrepo.repo.state.check_edits`); when ``allowed_signers`` changes, every edit is checked;
4. ``stack.json`` parses and names only edits the tree holds;
5. every proposal (``proposals/<id>/``), pack (``packs/<id>/``) and approval (``edits/<id>/approvals/``)
   it adds or changes verifies as ``cathrepo verify`` checks it: id, signature by a signer valid then,
   every file hash (:func:`~cathrepo.repo.propose.check_proposals`, :func:`~cathrepo.repo.packs.check_pack`,
   :func:`~cathrepo.repo.approve.approval_issues`); all of them when ``allowed_signers`` changes.

The staged index is read as a revision: ``git write-tree`` writes the tree the next commit would record
(the index ``GIT_INDEX_FILE`` names, as git sets it for the hook) and ``git commit-tree`` wraps it in an
unsigned commit that no ref points to, so every revision reader of :mod:`cathrepo.repo.state` reads the
index unchanged, blobs in one ``cat-file --batch``. Both are objects git would write on commit anyway;
the dangling commit is pruned by ``git gc``. For a push, each ref's new commits (``local ^remote``, all
of them for a new ref) must carry good signatures, and the pushed tip is checked as above against the
remote's tip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cathrepo.exceptions import CathrepoError, InvalidInputError
from cathrepo.repo import layout
from cathrepo.repo.state import Issue

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from cathrepo.repo import Repo
    from cathrepo.repo.verified import Verified

ZERO = "0" * 40
KEY_ARMOUR = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)?-----")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
#: What git may hold in an edit's ``delta/`` directory besides ``.dvc`` pointers.
DELTA_FILES = ("adapter_config.json", ".gitignore")
_INDEX_IDENTITY = {"user.name": "cathrepo hooks", "user.email": "hooks@cathrepo.invalid"}


@dataclass(frozen=True)
class PushUpdate:
    """One line git hands a pre-push hook on stdin."""

    local_ref: str
    local_sha: str
    remote_ref: str
    remote_sha: str


def parse_push_lines(text: str) -> list[PushUpdate]:
    """``<local ref> <local sha> <remote ref> <remote sha>`` lines (githooks(5), pre-push)."""
    updates = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise InvalidInputError(f"pre-push: line {number} of git's input is not '<local ref> <local sha> "
                                    f"<remote ref> <remote sha>': {line!r}.")
        updates.append(PushUpdate(*parts))
    return updates


def staged_issues(repo: Repo) -> list[Issue]:
    """What is wrong with the index as the next commit would record it (see the module docstring)."""
    tree = repo.git.run(["write-tree"], hint="Resolve the merge conflicts first.").strip()
    head = repo.git.head()
    args = ["commit-tree", "--no-gpg-sign", "-m", "cathrepo hooks: the staged index", tree]
    sha = repo.git.run([*args, *(["-p", head] if head else [])], config=_INDEX_IDENTITY).strip()
    return tree_issues(repo, sha, head, where="the index")


def pushed_issues(repo: Repo, updates: Iterable[PushUpdate], verified: Verified | None = None) -> list[Issue]:
    """What is wrong with the commits a push sends: each new commit's signature, then the pushed tip
    against the remote's tip (see the module docstring). Deleting a ref sends nothing and passes."""
    from cathrepo.repo.verify import commit_checks

    issues: list[Issue] = []
    for update in updates:
        if update.local_sha == ZERO:
            continue
        base = _known(repo, update.remote_sha)
        shas = repo.git.run(["rev-list", update.local_sha, *(["--not", base] if base else [])]).split()
        for sha, check in commit_checks(repo.git, shas).items():
            if not check.ok:
                issues.append(Issue(f"commit {sha[:12]}", f"signature does not verify: {check.detail}"))
        issues.extend(tree_issues(repo, update.local_sha, base, where=f"pushed commit {update.local_sha[:12]}",
                                  verified=verified))
    return issues


def _known(repo: Repo, sha: str) -> str | None:
    """``sha`` when this clone has that commit (a remote tip it fetched), else None."""
    if sha == ZERO:
        return None
    try:
        return repo.git.rev_parse(sha)
    except CathrepoError:
        return None


def tree_issues(repo: Repo, sha: str, base: str | None, *, where: str,
                verified: Verified | None = None) -> list[Issue]:
    """Checks 1-5 of the module docstring on commit ``sha``, for what changed since ``base`` (None: all)."""
    from cathrepo.repo.git_records import parse_ls_tree_sizes

    blobs = parse_ls_tree_sizes(repo.git.run(["ls-tree", "-r", "-l", "-z", "--full-tree", sha]))
    if base is None:
        changed = sorted(blobs)
    else:
        out = repo.git.run(["diff-tree", "-r", "-z", "--no-renames", "--name-only", base, sha])
        changed = [p for p in out.split("\0") if p]
    limit = max_file_bytes(repo, base or sha)
    issues = file_issues(repo, {p: blobs[p] for p in changed if p in blobs}, limit)
    issues.extend(_edit_issues(repo, sha, changed, blobs, verified, where))
    issues.extend(_stack_issues(repo, sha, blobs, where))
    issues.extend(_signed_issues(repo, sha, changed, blobs, where))
    return issues


def max_file_bytes(repo: Repo, rev: str) -> int:
    """``[hooks] max_file_bytes`` of ``cathrepo.toml`` at ``rev`` (the default when it has none)."""
    from cathrepo.config import HooksConfig

    try:
        return repo.config_at(rev).hooks.max_file_bytes
    except CathrepoError:
        return HooksConfig().max_file_bytes


def file_issues(repo: Repo, files: Mapping[str, tuple[str, int]], limit: int) -> list[Issue]:
    """Checks 1 and 2 on ``files`` (path -> (blob id, size)): key armour, weights, size."""
    issues = []
    small = {path: oid for path, (oid, size) in files.items() if size <= limit}
    data = repo.git.read_objects(list(small.values()))
    for path, (_oid, size) in sorted(files.items()):
        problem = weight_problem(path)
        if problem is None and size > limit and not path.endswith(".dvc"):
            problem = (f"{size / 2**20:.1f} MiB is over the {limit / 2**20:.1f} MiB limit for a file in git "
                       "([hooks] max_file_bytes in cathrepo.toml); track it with DVC (dvc add) instead")
        if problem:
            issues.append(Issue(path, problem))
        armour = KEY_ARMOUR.search(data[small[path]]) if path in small else None
        if armour is not None:
            kind = armour.group(1).decode().strip() or "PEM"
            issues.append(Issue(path, f"private key material ({kind} private key armour): keys never enter "
                                      "the repository; unstage it (git rm --cached) and replace the key"))
    return issues


def weight_problem(path: str) -> str | None:
    """Why ``path`` may not be a file in git (check 2), or None."""
    parts = path.split("/")
    name = parts[-1]
    if name.endswith(".dvc"):
        return None
    if name.lower().endswith(WEIGHT_SUFFIXES):
        return ("weight file outside DVC: git holds only its .dvc pointer (cathrepo edit writes both; by hand: "
                "dvc add, then stage the .dvc file)")
    if len(parts) >= 4 and parts[0] == layout.EDITS and parts[2] == layout.DELTA_DIR and name not in DELTA_FILES:
        return (f"only {', '.join(DELTA_FILES)} and .dvc pointers belong in git under an edit's "
                f"{layout.DELTA_DIR}/ (weights go through DVC)")
    return None


def _edit_issues(repo: Repo, sha: str, changed: list[str], blobs: Mapping[str, object],
                 verified: Verified | None, where: str) -> list[Issue]:
    """Check 3: every added or changed edit directory (all of them when ``allowed_signers`` changed)."""
    from cathrepo.repo.state import check_edits

    present = {p.split("/")[1] for p in blobs if p.startswith(layout.EDITS + "/") and p.count("/") >= 2}
    touched = present if layout.ALLOWED_SIGNERS in changed else {
        p.split("/")[1] for p in changed if p.startswith(layout.EDITS + "/") and p.count("/") >= 2}
    ids = sorted(touched & present)
    if not ids:
        return []
    try:
        checks = check_edits(repo, sha, ids, verified=verified, records=False)
    except CathrepoError as exc:
        return [Issue(layout.ALLOWED_SIGNERS, f"edits cannot be verified: {exc.message}")]
    if verified is not None:
        verified.save()
    return [Issue(i.path, f"edit does not verify: {i.problem.replace(sha, where)}")
            for eid in ids for i in checks[eid].issues]


def _stack_issues(repo: Repo, sha: str, blobs: Mapping[str, object], where: str) -> list[Issue]:
    """Check 4: ``stack.json`` parses and names only edits present."""
    from cathrepo.repo.layout import Stack

    try:
        stack = Stack.from_bytes(repo.git.show_file(sha, layout.STACK))
    except CathrepoError as exc:
        return [Issue(layout.STACK, f"does not parse as the active set: {exc.message}")]
    return [Issue(layout.STACK, f"names edit {eid}, which is not in {where}")
            for eid in stack.active if layout.edit_path(eid, layout.RECORD) not in blobs]


def _touched(changed: list[str], blobs: Mapping[str, object], top: str, record: str) -> list[str]:
    """The ids of the directories under ``top`` that the tree holds (by their ``record``) and that
    ``changed`` touches (all of them when ``allowed_signers`` changed)."""
    present = {p.split("/")[1] for p in blobs if p.startswith(top + "/") and p.endswith("/" + record)}
    if layout.ALLOWED_SIGNERS in changed:
        return sorted(present)
    return sorted(present & {p.split("/")[1] for p in changed if p.startswith(top + "/") and p.count("/") >= 2})


def _signed_issues(repo: Repo, sha: str, changed: list[str], blobs: Mapping[str, object], where: str) -> list[Issue]:
    """Check 5: every added or changed proposal, pack and approval verifies."""
    from cathrepo.provenance.approvals import DIRECTORY
    from cathrepo.repo.approve import approval_issues
    from cathrepo.repo.packs import SIGNATURES, check_pack
    from cathrepo.repo.propose import check_proposals
    from cathrepo.repo.written import Signed

    found: list[tuple[str, str]] = []  # (what, "path: problem")
    try:
        if proposals := _touched(changed, blobs, layout.PROPOSALS, layout.PROPOSAL):
            listing = repo.git.list_tree(sha, layout.PROPOSALS)
            found += [("proposal", p) for c in check_proposals(repo, sha, listing, proposals) for p in c.issues]
        if packs := _touched(changed, blobs, layout.PACKS, layout.PACK):
            signed = Signed(repo, sha, SIGNATURES)
            found += [("pack", p) for pack_id in packs for p in check_pack(repo, pack_id, sha, signed)[1]]
        approved = {p.split("/")[1] for p in changed if p.startswith(layout.EDITS + "/") and f"/{DIRECTORY}/" in p}
        if approved or (layout.ALLOWED_SIGNERS in changed and any(f"/{DIRECTORY}/" in p for p in blobs)):
            everyone = layout.ALLOWED_SIGNERS in changed
            _, issues = approval_issues(repo, sha, repo.git.list_tree(sha, layout.EDITS),
                                        edit_ids=None if everyone else approved)
            found += [("approval", str(i)) for i in issues]
    except CathrepoError as exc:
        return [Issue(layout.ALLOWED_SIGNERS, f"proposals, packs or approvals cannot be verified: {exc.message}")]
    out = []
    for what, text in found:
        path, _, problem = text.partition(": ")
        out.append(Issue(path, f"{what} does not verify: {problem.replace(sha, where)}"))
    return out
