"""What git hands back, as cathrepo reads it: commits (``git log`` records with their trailers),
signature checks, and the line of git's output that says what went wrong. Plain parsing, no GitPython:
:mod:`cathrepo.repo.git` runs git and hands its output here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: A ``git log`` record per commit: fields split by \x1f, records by \x1e (read by :func:`parse_commit`).
LOG_FORMAT = "%H%x1f%P%x1f%an%x1f%ae%x1f%aI%x1f%s%x1f%b%x1f%(trailers:only,unfold)%x1e"
TRAILER_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*): ?(.*)$")


@dataclass(frozen=True)
class CommitInfo:
    """One commit as cathrepo reads it.

    Attributes:
        sha: full commit id.
        author_name: the author's name.
        author_email: the author's e-mail.
        date: author date, ISO-8601 with offset.
        subject: the first line of the message.
        body: the rest of the message without the trailer block.
        trailers: git trailers ("Cathrepo-Edit: <id>"); a repeated key keeps its last value.
        parents: parent ids (two or more for a merge).
    """

    sha: str
    author_name: str
    author_email: str
    date: str
    subject: str
    body: str
    trailers: dict[str, str] = field(default_factory=dict)
    parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class SignatureCheck:
    """The result of checking one commit's signature.

    Attributes:
        ok: True only for a good signature by a key listed in allowed_signers.
        principal: who signed, when git could tell.
        fingerprint: the signing key's fingerprint, when the commit is signed.
        detail: git's (ssh-keygen's) own words, for the user.
    """

    ok: bool
    principal: str | None
    fingerprint: str | None
    detail: str


STATUS_WORDS = {
    "G": "good signature",
    "B": "bad signature",
    "U": "good signature, but the key is not in allowed_signers",
    "X": "good signature that has expired",
    "Y": "good signature made by an expired key",
    "R": "good signature made by a revoked key",
    "E": "the signature cannot be checked",
    "N": "the commit is not signed",
}


def first_line(text: str) -> str:
    """The line of git's output that says what went wrong ("fatal: ..." first, else the first line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line.removeprefix("fatal: ").removeprefix("error: ")
    return lines[0] if lines else "no message from git"


def git_message(err: str, out: str) -> str:
    """git's reason for a failure: stderr when it said anything, else the last line of stdout."""
    if err.strip():
        return first_line(err)
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[-1] if lines else "no message from git"


def parse_commit(record: str) -> CommitInfo:
    """One :data:`LOG_FORMAT` record; the trailer block leaves the body."""
    sha, parents, name, email, date, subject, body, trailer_text = (record.lstrip("\n").split("\x1f") + [""] * 8)[:8]
    trailers: dict[str, str] = {}
    for line in trailer_text.splitlines():
        match = TRAILER_LINE.match(line.strip())
        if match:
            trailers[match.group(1)] = match.group(2).strip()
    body = body.strip("\n")
    if trailers:
        paragraphs = body.split("\n\n")
        last = paragraphs[-1].strip().splitlines()
        if last and all(TRAILER_LINE.match(line.strip()) for line in last):
            body = "\n\n".join(paragraphs[:-1]).strip("\n")
    return CommitInfo(sha=sha.strip(), author_name=name, author_email=email, date=date, subject=subject,
                      body=body, trailers=trailers, parents=tuple(parents.split()))


def parse_batch(out: bytes, wanted: list[str]) -> tuple[dict[str, bytes], str | None]:
    """``git cat-file --batch`` output for the ids ``wanted`` (in order): id -> contents, and the first
    id git does not have (None when it has them all)."""
    pos, found = 0, dict[str, bytes]()
    for oid in wanted:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        if len(header) != 3:
            return found, oid
        size = int(header[2])
        found[oid] = out[end + 1 : end + 1 + size]
        pos = end + 2 + size
    return found, None


def parse_ls_tree(text: str) -> dict[str, tuple[str, str]]:
    """``git ls-tree -z`` output: path -> (``blob`` or ``tree``, object id); other entries are left out."""
    listing: dict[str, tuple[str, str]] = {}
    for entry in text.split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] in ("blob", "tree"):
            listing[path] = (parts[1], parts[2])
    return listing


def parse_ls_tree_sizes(text: str) -> dict[str, tuple[str, int]]:
    """``git ls-tree -r -l -z`` output: path -> (blob id, size in bytes) of every blob (symbolic links
    included: their blob is the link's target); trees and submodules are left out."""
    listing: dict[str, tuple[str, int]] = {}
    for entry in text.split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 4 and parts[1] == "blob" and parts[3].isdigit():
            listing[path] = (parts[2], int(parts[3]))
    return listing
