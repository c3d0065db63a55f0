"""The edit repository: the :class:`Repo` class, with one module per verb (STYLE.md §1, §2).

``Repo`` holds what every verb needs (the root, the git and DVC adapters, the config, readers of the
stack and of edit records at any revision) and delegates each verb to its own module: ``init``,
``edit``, ``commit``, ``revert``, ``promote`` (with rollback and the deployment log), ``log``, ``status``,
``verify``, ``materialize``, ``remote``.
Writing verbs are decorated with :func:`~cathrepo.repo.lock.locked` (the repository lock, re-entrant per
``Repo``), sign their commits with :meth:`Repo.signing_key` on the commit call itself, and undo what
they staged when they fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cathrepo.config import RepoConfig, load_config, parse_config
from cathrepo.exceptions import (
    BaseModelMismatchError,
    NotARepositoryError,
    NotFoundError,
    SigningError,
)
from cathrepo.repo import layout
from cathrepo.repo.layout import Stack
from cathrepo.repo.lines import LineVerbs
from cathrepo.repo.review import ReviewVerbs

if TYPE_CHECKING:
    from cathrepo.edits.base import EditResult
    from cathrepo.facts.schema import EditRequest
    from cathrepo.gates.results import GateReport
    from cathrepo.provenance.keys import SigningKey
    from cathrepo.provenance.manifest import EditRecord
    from cathrepo.repo.explain import Explanation
    from cathrepo.repo.git import Git
    from cathrepo.repo.lock import RepoLock
    from cathrepo.repo.log import LogEntry
    from cathrepo.repo.materialize import Generation, Materialized
    from cathrepo.repo.revert import RevertOutcome
    from cathrepo.repo.storage import Storage
    from cathrepo.repo.verify import VerifyReport


class Repo(LineVerbs, ReviewVerbs):
    """An edit repository rooted at ``root`` (a git work tree holding ``cathrepo.toml``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._lock: RepoLock | None = None

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str = ".") -> Repo:
        """Open the repository containing ``path`` (searching parent directories, like git)."""
        start = Path(path).expanduser().resolve()
        if not start.exists():
            raise NotARepositoryError(f"'{path}' does not exist.")
        for candidate in (start, *start.parents):
            if (candidate / layout.CONFIG).is_file() and (candidate / ".git").exists():
                return cls(candidate)
        raise NotARepositoryError(
            f"'{start}' is not a cathrepo repository (no {layout.CONFIG} with a .git beside it).",
            hint="Run 'cathrepo init' there, or pass -C PATH.",
        )

    @classmethod
    def init(
        cls,
        path: Path | str,
        *,
        base: str | None = None,
        remote: str | None = None,
        author: str | None = None,
        hooks: bool = False,
        install_source: str | None = None,
    ) -> Repo:
        """Create a repository (:func:`cathrepo.repo.init.init_repo`); ``hooks`` installs cathrepo's git
        hooks, ``install_source`` is the pip requirement its CI job installs cathrepo from."""
        from cathrepo.repo.init import init_repo

        return cls(init_repo(Path(path), base=base, remote=remote, author=author, hooks=hooks,
                             install_source=install_source))

    # --- adapters and settings -------------------------------------------------------------------

    @cached_property
    def git(self) -> Git:
        from cathrepo.repo.git import Git

        return Git(self.root)

    @cached_property
    def storage(self) -> Storage:
        from cathrepo.repo.storage import Storage

        return Storage(self.root)

    @property
    def config(self) -> RepoConfig:
        return load_config(self.root / layout.CONFIG)

    def config_at(self, rev: str) -> RepoConfig:
        data = self.git.show_file(rev, layout.CONFIG)
        if data is None:
            raise NotFoundError(f"Revision {rev} has no {layout.CONFIG}.")
        return parse_config(data.decode("utf-8"), f"{rev}:{layout.CONFIG}")

    @contextmanager
    def locked(self, command: str) -> Iterator[None]:
        """Hold the repository lock for ``command``; re-entrant on this object, so a locked verb may call
        another (verbs are decorated with :func:`cathrepo.repo.lock.locked`)."""
        from cathrepo.repo.lock import RepoLock

        if self._lock is not None:
            yield
            return
        with RepoLock(self.root, command=command) as lock:
            self._lock = lock
            try:
                yield
            finally:
                self._lock = None

    @property
    def holds_lock(self) -> bool:
        """Whether this object holds the repository lock now (inside a writing verb)."""
        return self._lock is not None

    def signing_key(self) -> SigningKey:
        """The key git signs with here (``user.signingkey``), which also signs edit records."""
        from cathrepo.provenance.keys import load_key

        path = self.git.config_get("user.signingkey")
        if not path:
            raise SigningError(
                "This repository has no signing key configured (git config user.signingkey).",
                hint="Run 'cathrepo init' again in it to configure signing.",
            )
        return load_key(Path(path).expanduser())

    # --- reading state at a revision -------------------------------------------------------------

    def stack(self, rev: str = "HEAD") -> Stack:
        if rev == "WORKTREE":
            path = self.root / layout.STACK
            return Stack.from_bytes(path.read_bytes() if path.exists() else None)
        return Stack.from_bytes(self.git.show_file(rev, layout.STACK))

    def edit_ids(self, rev: str = "HEAD") -> list[str]:
        """Every edit directory present at ``rev`` (active or reverted)."""
        files = self.git.list_files(rev, layout.EDITS)
        return sorted({f.split("/")[1] for f in files if f.endswith("/" + layout.RECORD)})

    def resolve_edit(self, ref: str, rev: str = "HEAD") -> str:
        """The full edit id for an id or unique prefix (at least 4 characters)."""
        ref = ref.strip().lower()
        ids = self.edit_ids(rev)
        matches = [e for e in ids if e.startswith(ref)] if len(ref) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFoundError(f"No edit '{ref}' at {rev}.", hint="List edits with 'cathrepo log'.")
        raise NotFoundError(f"Edit prefix '{ref}' is ambiguous: {', '.join(matches)}.", hint="Give more digits.")

    def record(self, edit_id: str, rev: str = "HEAD") -> EditRecord:
        from cathrepo.provenance.manifest import EditRecord

        data = self.git.show_file(rev, layout.edit_path(edit_id, layout.RECORD))
        if data is None:
            raise NotFoundError(f"Edit {edit_id} has no record at {rev}.")
        return EditRecord.from_bytes(data, what=layout.edit_path(edit_id, layout.RECORD))

    # --- the base model --------------------------------------------------------------------------

    def check_base(self) -> Path:
        """The base model's directory, after checking its weights still hash to the recorded sha256."""
        from cathrepo.models import resolve_model, weights_sha256

        base = self.config.base
        resolved = resolve_model(base.source)
        actual = weights_sha256(resolved.path)
        if actual != base.sha256:
            raise BaseModelMismatchError(
                f"The base model at '{resolved.path}' has sha256 {actual[:12]}…, but {layout.CONFIG} "
                f"records {base.sha256[:12]}….",
                hint="Restore the original weights (or re-create the converted cache by deleting it); "
                "deltas computed on other weights would not mean the same.",
            )
        return resolved.path

    def load_base(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the verified base model, with no edits applied."""
        from cathrepo.models import load_model

        return load_model(self.check_base())

    # --- verbs (each in its own module, imported when called so opening a repository stays cheap) ------

    def edit(
        self,
        requests: Sequence[EditRequest],
        *,
        method: str | None = None,
        params: Mapping[str, Any] | None = None,
        corpus: Path | None = None,
        dry_run: bool = False,
        progress: Callable[[str], None] | None = None,
        on_outcome: Callable[[EditResult], None] | None = None,
    ) -> list[EditResult]:
        """Edit, gate and commit each request's fact (:func:`cathrepo.repo.edit.edit`)."""
        from cathrepo.repo.edit import edit

        return edit(self, requests, method=method, params=params, corpus=corpus, dry_run=dry_run,
                    progress=progress, on_outcome=on_outcome)

    def forget(self, requests: Sequence[EditRequest], **options: Any) -> list[EditResult]:
        """Forget each request's fact in a mode (:func:`cathrepo.repo.forget.forget`)."""
        from cathrepo.repo.forget import forget
        return forget(self, requests, **options)

    def revert(self, ref: str, *, gate: bool = True, force: bool = False,
               progress: Callable[[str], None] | None = None) -> RevertOutcome:
        """Take edit ``ref`` out of the active set in a signed commit (:func:`cathrepo.repo.revert.revert`)."""
        from cathrepo.repo.revert import revert

        return revert(self, ref, gate=gate, force=force, progress=progress)

    def log(self, rev: str = "HEAD", *, max_count: int | None = None, metrics: bool = False) -> list[LogEntry]:
        """The commits reachable from ``rev``, newest first, with the edit each one made or reverted (and with
        ``metrics``, the retention, perplexity and norm growth its gates recorded)."""
        from cathrepo.repo.log import log

        return log(self, rev, max_count=max_count, metrics=metrics)

    def show(self, ref: str, rev: str = "HEAD") -> dict[str, Any]:
        """One edit's record and status at ``rev``."""
        from cathrepo.repo.log import show

        return show(self, ref, rev)

    def status(self) -> dict[str, Any]:
        """The active edits, the base model and what the work tree has changed."""
        from cathrepo.repo.status import status

        return status(self)

    def verify(self, rev: str = "HEAD", *, full: bool = False) -> VerifyReport:
        """Every commit signature, edit signature and file hash reachable from ``rev`` (what this clone
        verified before only by its weights, unless ``full``)."""
        from cathrepo.repo.verify import verify

        return verify(self, rev, full=full)

    def materialize(self, rev: str = "HEAD", *, verify: bool = True, tenant: str | None = None) -> Materialized:
        """The verified base model with ``rev``'s active deltas (``tenant``'s share) applied in order."""
        from cathrepo.repo.materialize import materialize

        return materialize(self, rev, verify=verify, tenant=tenant)

    def generate(self, prompt: str, rev: str = "HEAD", *, max_new_tokens: int = 32,
                 tenant: str | None = None) -> Generation:
        """The greedy continuation of ``prompt`` by the model materialized at ``rev`` (for ``tenant``)."""
        from cathrepo.repo.materialize import generate

        return generate(self, prompt, rev, max_new_tokens=max_new_tokens, tenant=tenant)

    def explain(self, prompt: str, rev: str = "HEAD", *, tenant: str | None = None,
                **options: Any) -> Explanation:
        """The answer to ``prompt``, the edits active for it and which of them caused it
        (:func:`cathrepo.repo.explain.explain`)."""
        from cathrepo.repo.explain import explain

        return explain(self, prompt, rev, tenant=tenant, **options)

    def gate(
        self,
        rev: str = "HEAD",
        *,
        stage: str = "revision",
        gates: Sequence[str] | None = None,
        against: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> GateReport:
        """Run a stage's gates on the change ``rev`` makes (:func:`cathrepo.repo.gate.gate`)."""
        from cathrepo.repo.gate import gate

        return gate(self, rev, stage=stage, gates=gates, against=against, progress=progress)

    def push(self) -> int:
        return self.storage.push()

    def pull(self) -> int:
        return self.storage.pull()
