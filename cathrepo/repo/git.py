"""The git adapter: the one module that imports GitPython.

Everything cathrepo asks of git goes through :class:`Git`: signed commits with trailers that name the
edit, history and file contents at old revisions, signature checks against the repository's
``allowed_signers``, and the undo steps a failed write needs; what git hands back is parsed by
:mod:`cathrepo.repo.git_records`. GitPython is imported inside methods to keep ``cathrepo --help`` fast.
Commands open a repository handle in a ``with`` block, so git's helper processes are closed; reading
objects is the exception: one handle per :class:`Git` serves every read (a command reads several files
of every active edit, and a handle per read started two processes for each), ended by
:meth:`Git.close` or when the :class:`Git` is collected. Failures become
:class:`~cathrepo.exceptions.GitError` carrying git's own message and a next step.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.exceptions import GitError, InvalidInputError, NotARepositoryError, NotFoundError
from cathrepo.repo.git_records import (
    LOG_FORMAT,
    STATUS_WORDS,
    CommitInfo,
    SignatureCheck,
    first_line,
    git_message,
    parse_batch,
    parse_commit,
    parse_ls_tree,
)

if TYPE_CHECKING:
    import git as gitpython

    from cathrepo.provenance.keys import SigningKey

log = logging.getLogger(__name__)

_TRAILER_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_EDITOR": "true"}
_FULL_ID = re.compile(r"[0-9a-f]{40}")


class Git:
    """A git work tree.

    Args:
        path: the top directory of an existing work tree (not a subdirectory, not a bare repository).

    Raises:
        NotARepositoryError: when ``path`` is not the top of a git work tree.
    """

    def __init__(self, path: Path) -> None:
        import git as gitpython

        path = Path(path)
        try:
            with gitpython.Repo(path) as repo:
                work_tree = repo.working_tree_dir
        except (gitpython.InvalidGitRepositoryError, gitpython.NoSuchPathError):
            raise NotARepositoryError(
                f"{path} is not a git repository.",
                hint="Run 'cathrepo init' there, or pass -C with the repository's top directory.",
            ) from None
        if work_tree is None:
            raise NotARepositoryError(f"{path} is a bare git repository.",
                                      hint="Clone it into a work tree first: git clone <path> <dir>.")
        self._root = Path(work_tree).resolve()
        self._reader: gitpython.Repo | None = None
        self._trees: dict[tuple[str, str], Any] = {}

    @classmethod
    def init(cls, path: Path, *, branch: str = "main") -> Git:
        """Create (or re-open) a git repository at ``path`` whose first branch is ``branch``."""
        import git as gitpython

        try:
            with gitpython.Repo.init(Path(path), mkdir=True, initial_branch=branch):
                pass
        except gitpython.GitCommandError as exc:
            raise GitError(f"git init failed in {path}: {first_line(str(exc.stderr))}",
                           hint="Check that the directory is writable.") from None
        return cls(path)

    @property
    def root(self) -> Path:
        """The absolute top directory of the work tree."""
        return self._root

    # --- running git -----------------------------------------------------------------------------

    @contextmanager
    def _repo(self) -> Iterator[gitpython.Repo]:
        import git as gitpython

        with gitpython.Repo(self._root) as repo:
            yield repo

    def _objects(self) -> gitpython.Repo:
        """One GitPython handle kept for reading objects, so its ``cat-file`` processes serve every read of
        this instance (a handle per read started two processes for each file). Objects are content
        addressed, so what it reads never goes stale; :meth:`close` (or the garbage collector) ends them."""
        import git as gitpython

        if self._reader is None:
            self._reader = gitpython.Repo(self._root)
        return self._reader

    def close(self) -> None:
        """End the processes the object reader keeps (reading again starts them anew)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._trees.clear()

    def _exec(self, args: Sequence[str], *, config: dict[str, str] | None = None) -> tuple[int, str, str]:
        cmd = ["git"]
        for key, value in (config or {}).items():
            cmd += ["-c", f"{key}={value}"]
        cmd += list(args)
        with self._repo() as repo:
            status, out, err = repo.git.execute(cmd, with_extended_output=True, with_exceptions=False,
                                                env=_ENV)
        return int(status), str(out), str(err)

    def run(self, args: Sequence[str], *, hint: str = "Run the same git command by hand to see more.",
            config: dict[str, str] | None = None) -> str:
        """Run ``git <args>`` in the work tree and return its stdout (for verbs this class lacks).

        Raises:
            GitError: with git's first error line and ``hint``.
        """
        status, out, err = self._exec(args, config=config)
        if status != 0:
            raise GitError(f"git {args[0]} failed: {git_message(err, out)}", hint=hint)
        return out

    def config_get(self, key: str) -> str | None:
        """A config value from any level (system, global, local), or None."""
        status, out, _ = self._exec(["config", "--get", key])
        return out.strip() if status == 0 and out.strip() else None

    def _config_set(self, key: str, value: str) -> None:
        self.run(["config", "--local", key, value], hint=f"Check that {self._root / '.git/config'} is writable.")

    # --- signing ---------------------------------------------------------------------------------

    def configure_signing(self, key: SigningKey, allowed_signers: Path) -> None:
        """Make every commit and tag of this repository SSH-signed by ``key``.

        Also sets a repository-local identity derived from the key's principal when none is configured
        at any level: CI machines often have no global ``user.name``/``user.email``, and a commit
        without one fails.
        """
        self._config_set("gpg.format", "ssh")
        self._config_set("user.signingkey", str(Path(key.private_path).absolute()))
        self._config_set("commit.gpgsign", "true")
        self._config_set("tag.gpgsign", "true")
        self._config_set("gpg.ssh.allowedSignersFile", str(Path(allowed_signers).absolute()))
        principal = key.principal or "cathrepo"
        if self.config_get("user.email") is None:
            self._config_set("user.email", principal if "@" in principal else f"{principal}@localhost")
        if self.config_get("user.name") is None:
            self._config_set("user.name", principal.split("@", 1)[0] or "cathrepo")

    def verify_commit(self, sha: str, *, allowed_signers: Path | None = None) -> SignatureCheck:
        """Check the signature of commit ``sha`` the way ``git verify-commit`` does.

        Args:
            sha: any revision naming a commit.
            allowed_signers: the file to trust; defaults to the repository's ``gpg.ssh.allowedSignersFile``.
        """
        commit = self.rev_parse(sha)
        config = {"gpg.ssh.allowedSignersFile": str(Path(allowed_signers).absolute())} if allowed_signers else None
        out = self.run(["log", "-1", "--format=%G?%x1f%GS%x1f%GF%x1f%GG", commit], config=config)
        code, signer, fingerprint, raw = (out.split("\x1f", 3) + ["", "", ""])[:4]
        code = code.strip() or "N"
        detail = first_line(raw) if raw.strip() else STATUS_WORDS.get(code, f"status {code}")
        if code != "G" and code in STATUS_WORDS and STATUS_WORDS[code] not in detail:
            detail = f"{STATUS_WORDS[code]}: {detail}"
        trusted = str(allowed_signers) if allowed_signers else self.config_get("gpg.ssh.allowedSignersFile")
        if code != "G" and code != "N" and (not trusted or not (self._root / trusted).is_file()):
            detail += f" (the allowed signers file {trusted or '(not configured)'} does not exist)"
        return SignatureCheck(ok=code == "G", principal=signer.strip() or None,
                              fingerprint=fingerprint.strip() or None, detail=detail)

    # --- index and commits -----------------------------------------------------------------------

    def add(self, paths: Sequence[Path | str]) -> None:
        """Stage ``paths`` (files or directories) for the next commit."""
        if paths:
            self.run(["add", "--", *map(str, paths)], hint="Check that the paths exist inside the repository.")

    def unstage(self, paths: Sequence[Path | str]) -> None:
        """Take ``paths`` out of the index again; the files in the work tree are kept."""
        if not paths:
            return
        if self.head() is None:
            self.run(["rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", *map(str, paths)])
        else:
            self.run(["reset", "-q", "HEAD", "--", *map(str, paths)])

    def commit(self, message: str, trailers: dict[str, str] | None = None, *, allow_empty: bool = False,
               sign_with: SigningKey | None = None) -> str:
        """Make a commit of the index and return its id.

        Args:
            message: subject line, optionally followed by a blank line and a body.
            trailers: git trailers appended to the message ("Cathrepo-Edit": "<id>").
            allow_empty: allow a commit that changes nothing (a promotion or a marker).
            sign_with: SSH-sign the commit with this key (``git -c gpg.format=ssh commit -S<key>``),
                whatever the configuration says; None leaves signing to git's configuration.

        Raises:
            InvalidInputError: an empty message or a trailer key/value git cannot hold.
            GitError: git refused (nothing staged, signing failed, a hook said no).
        """
        if not message.strip():
            raise InvalidInputError("A commit needs a message.")
        args = ["commit", "-q", "--cleanup=whitespace", "-m", message]
        for key, value in (trailers or {}).items():
            if not _TRAILER_KEY.match(key) or "\n" in str(value):
                raise InvalidInputError(f"'{key}: {value}' cannot be a git trailer.",
                                        hint="Keys are letters, digits and '-'; values are one line.")
            args += ["--trailer", f"{key}: {value}"]
        if allow_empty:
            args.append("--allow-empty")
        config = None
        if sign_with is not None:
            args.append(f"--gpg-sign={Path(sign_with.private_path).absolute()}")
            config = {"gpg.format": "ssh"}
        self.run(args, config=config, hint="If signing failed, check the key named by 'git config --show-origin "
                                           "user.signingkey'; if nothing was staged, stage the changes first.")
        sha = self.head()
        assert sha is not None
        return sha

    def head(self) -> str | None:
        """The id of HEAD, or None in a repository without commits."""
        status, out, _ = self._exec(["rev-parse", "--verify", "-q", "HEAD^{commit}"])
        return out.strip() if status == 0 else None

    def rev_parse(self, rev: str) -> str:
        """Resolve ``rev`` (a branch, tag, ``HEAD~2``, a short id) to a full commit id.

        Raises:
            NotFoundError: when no commit has that name.
        """
        if not rev or rev.startswith("-"):
            raise NotFoundError(f"'{rev}' is not a revision.", hint="Name a commit, branch or tag.")
        status, out, _ = self._exec(["rev-parse", "--verify", "-q", f"{rev}^{{commit}}"])
        if status != 0:
            raise NotFoundError(f"No commit named '{rev}' in {self._root}.",
                                hint="List revisions with 'cathrepo log' or 'git log --oneline'.")
        return out.strip()

    def current_branch(self) -> str | None:
        """The checked-out branch, or None on a detached HEAD."""
        status, out, _ = self._exec(["symbolic-ref", "--short", "-q", "HEAD"])
        return out.strip() if status == 0 else None

    # --- reading history -------------------------------------------------------------------------

    def show_file(self, rev: str, path: str) -> bytes | None:
        """The bytes of ``path`` at revision ``rev`` (no checkout), or None if it did not exist then.

        ``rev`` as a full commit id is read as it is; anything else is resolved first (callers that read
        many files at one revision resolve it once with :meth:`rev_parse`)."""
        sha = rev if _FULL_ID.fullmatch(rev) else self.rev_parse(rev)
        folder, _, name = str(path).strip("/").rpartition("/")
        tree = self._tree(sha, folder, rev)
        if tree is None:
            return None
        try:
            obj = tree / name
        except KeyError:
            return None
        if obj.type != "blob":
            return None
        return bytes(obj.data_stream.read())

    def _tree(self, sha: str, folder: str, rev: str) -> Any:
        """The tree of ``folder`` in commit ``sha`` (None if it has none), parsed once per reader: an edit's
        files share its folder, and every edit's folder shares ``edits/``."""
        import gitdb.exc

        key = (sha, folder)
        if key not in self._trees:
            if len(self._trees) >= 4096:
                self._trees.clear()
            if not folder:
                try:
                    self._trees[key] = self._objects().commit(sha).tree
                except (ValueError, gitdb.exc.BadName, gitdb.exc.BadObject):
                    raise NotFoundError(f"No commit named '{rev}' in {self._root}.",
                                        hint="List revisions with 'cathrepo log' or 'git log --oneline'.") from None
            else:
                parent, _, name = folder.rpartition("/")
                above = self._tree(sha, parent, rev)
                try:
                    sub = above / name if above is not None else None
                except KeyError:
                    sub = None
                self._trees[key] = sub if sub is not None and sub.type == "tree" else None
        return self._trees[key]

    def read_objects(self, oids: Sequence[str]) -> dict[str, bytes]:
        """The raw contents of many objects (blobs, commits) by id, through one ``git cat-file --batch``
        whatever their number (thousands of edits read in one process, not one round trip each).

        Raises:
            NotFoundError: naming the first id git does not have.
        """
        import subprocess

        wanted = list(dict.fromkeys(oids))
        if not wanted:
            return {}
        done = subprocess.run(["git", "cat-file", "--batch"], cwd=self._root, input="\n".join(wanted).encode() + b"\n",
                              capture_output=True, env={**os.environ, **_ENV}, check=False)
        if done.returncode != 0:
            raise GitError(f"git cat-file failed: {first_line(done.stderr.decode(errors='replace'))}",
                           hint="Run 'git fsck' in the repository.")
        found, missing = parse_batch(done.stdout, wanted)
        if missing is not None:
            raise NotFoundError(f"git has no object {missing} in {self._root}.", hint="Run 'git fsck' in the repository.")
        return found

    def object_sizes(self, names: Sequence[str]) -> dict[str, int]:
        """Each object's size (``<rev>:<path>`` too) from one ``cat-file --batch-check``; absent ones left out."""
        import subprocess

        wanted = list(dict.fromkeys(names))
        done = subprocess.run(["git", "cat-file", "--batch-check=%(objectsize)"], cwd=self._root, check=False,
                              input="\n".join(wanted).encode() + b"\n", capture_output=True, env={**os.environ, **_ENV})
        return {n: int(line) for n, line in zip(wanted, done.stdout.decode().splitlines(), strict=False)
                if line.isdigit()} if wanted else {}

    def list_tree(self, rev: str, under: str = "") -> dict[str, tuple[str, str]]:
        """Every file and directory below ``under`` at ``rev``: repository-relative path -> (``blob`` or
        ``tree``, object id), from one ``git ls-tree``."""
        sha = rev if _FULL_ID.fullmatch(rev) else self.rev_parse(rev)
        args = ["ls-tree", "-r", "-t", "-z", "--full-tree", sha]
        if under.strip("/"):
            args += ["--", under.strip("/") + "/"]
        return parse_ls_tree(self.run(args))

    def read_files(self, rev: str, under: str = "") -> dict[str, bytes]:
        """Every file below the directory ``under`` at ``rev`` (repository-relative path -> bytes), read
        by two git processes whatever their number."""
        blobs = {path: oid for path, (kind, oid) in self.list_tree(rev, under).items() if kind == "blob"}
        data = self.read_objects(list(blobs.values()))
        return {path: data[oid] for path, oid in blobs.items()}

    def allowed_signers_file(self) -> Path | None:
        """The allowed signers file git checks commit signatures against (``gpg.ssh.allowedSignersFile``)."""
        configured = self.config_get("gpg.ssh.allowedSignersFile")
        return (self._root / configured) if configured else None

    def list_files(self, rev: str, under: str = "") -> list[str]:
        """Files (repository-relative, sorted) at ``rev`` below the directory ``under``."""
        return sorted(path for path, (kind, _) in self.list_tree(self.rev_parse(rev), under).items() if kind == "blob")

    def log(self, rev: str = "HEAD", paths: Sequence[str] | None = None,
            max_count: int | None = None, trailer_keys: Sequence[str] | None = None) -> list[CommitInfo]:
        """Commits reachable from ``rev``, newest first (empty for a repository without commits). With
        ``trailer_keys``, only those trailers are read and not the body (``body`` is empty): a history of
        ten thousand edits, each with a trailer per gate, is then a tenth of the text to parse."""
        if rev == "HEAD" and self.head() is None:
            return []
        fmt = LOG_FORMAT
        if trailer_keys:
            keys = ",".join(f"key={k}" for k in trailer_keys)
            fmt = LOG_FORMAT.replace("%b", "").replace("%(trailers:only,unfold)", f"%(trailers:{keys},unfold)")
        args = ["log", f"--format={fmt}", self.rev_parse(rev)]
        if max_count is not None:
            args.insert(1, f"--max-count={int(max_count)}")
        if paths:
            args += ["--", *map(str, paths)]
        return [parse_commit(rec) for rec in self.run(args).split("\x1e") if rec.strip()]

    def rev_list(self, rev: str = "HEAD") -> list[str]:
        """Ids of the commits reachable from ``rev``, newest first."""
        if rev == "HEAD" and self.head() is None:
            return []
        return self.run(["rev-list", self.rev_parse(rev)]).split()

    # --- work tree -------------------------------------------------------------------------------

    def status_porcelain(self) -> list[str]:
        """``git status --porcelain`` lines ("XY path"), untracked files listed one by one."""
        out = self.run(["status", "--porcelain=v1", "--untracked-files=all"])
        return [line for line in out.splitlines() if line.strip()]
