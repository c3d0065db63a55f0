"""The one exception tree of cathrepo.

Every error a user can cause is a :class:`CathrepoError` whose message says what happened and what to
do next. Library code raises; only ``cathrepo.cli.main`` turns an error into a red line and an exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class _Failure(Protocol):
    def summary(self) -> str: ...


class _Report(Protocol):
    """What a refusal reads of a gate report (:class:`cathrepo.gates.results.GateReport`): the errors
    sit below every stage and import none of them."""

    @property
    def failures(self) -> Sequence[_Failure]: ...


class CathrepoError(Exception):
    """Base class of every error cathrepo raises on purpose.

    Attributes:
        exit_code: the process exit status ``cathrepo`` uses for this error.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} {hint}")


class InvalidInputError(CathrepoError):
    """A fact, file or option the user gave cannot be used as it is."""

    exit_code = 2


class ConfigError(CathrepoError):
    """``cathrepo.toml`` (or another settings file) is missing, malformed or inconsistent."""

    exit_code = 2


class NotARepositoryError(CathrepoError):
    """The directory is not a cathrepo repository."""

    exit_code = 2


class ModelLoadError(CathrepoError):
    """The base model cannot be found or loaded."""

    exit_code = 2


class BaseModelMismatchError(CathrepoError):
    """The base model's weights no longer match the hash recorded in ``cathrepo.toml``."""

    exit_code = 3


class UnknownNameError(CathrepoError):
    """A registry lookup (edit method, gate, merge strategy) found nothing under that name."""

    exit_code = 2


class DeltaError(CathrepoError):
    """A delta does not fit the model (shape, dtype, non-finite values) or cannot be read."""


class EditFailedError(CathrepoError):
    """The edit method could not compute a delta for the fact."""


class GateFailedError(CathrepoError):
    """The edit (or revision) did not pass its gates; nothing was committed.

    Attributes:
        results: the gate results, so callers can render the measured numbers.
        attempts: what was tried (method, site, failed gates with their numbers), when the caller says.
        fact: the refused fact, when known.
    """

    exit_code = 4

    def __init__(self, message: str, *, results: object = None, hint: str | None = None,
                 attempts: list[dict[str, object]] | None = None, fact: object = None) -> None:
        super().__init__(message, hint=hint)
        self.results = results
        self.attempts = attempts
        self.fact = fact

    @classmethod
    def from_report(cls, report: _Report, what: str, *, tried: str = "", after: str = "",
                    hint: str | None = None, attempts: list[dict[str, object]] | None = None,
                    fact: object = None) -> GateFailedError:
        """The one refusal message: ``<what> failed its gates: <gate status numbers; ...>.<tried> Nothing
        was committed.<after>``, carrying the report for callers that render it."""
        failures = "; ".join(f.summary() for f in report.failures)
        return cls(f"{what} failed its gates: {failures}.{tried} Nothing was committed.{after}",
                   results=report, hint=hint, attempts=attempts, fact=fact)


class VerificationError(CathrepoError):
    """A signature, hash or stored object does not verify. The message names the exact file."""

    exit_code = 5


class SigningError(CathrepoError):
    """A key is missing or a signature could not be made."""

    exit_code = 5


class StorageError(CathrepoError):
    """DVC could not store, find or fetch a weight file."""

    exit_code = 6


class GitError(CathrepoError):
    """A git operation failed."""

    exit_code = 6


class LockError(CathrepoError):
    """Another cathrepo process holds the repository lock."""

    exit_code = 7


class NotFoundError(CathrepoError):
    """An edit, revision or file the user named does not exist."""

    exit_code = 2


class MergeConflictError(CathrepoError):
    """Two lines of edits disagree about the model (the same fact with different answers, or an edit one
    side reverted and the other kept); nothing was merged.

    Attributes:
        conflicts: the conflicts found, each naming both edits.
    """

    exit_code = 8

    def __init__(self, message: str, *, conflicts: Sequence[object] = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.conflicts = list(conflicts)


class ApprovalRequiredError(CathrepoError):
    """An edit's risk tier needs more approvals (``cathrepo approve``) than it has; nothing was merged or
    promoted.

    Attributes:
        missing: one entry per edit short of approvals (its id, tier, approvals it has and needs), as
            :class:`cathrepo.repo.approve.ApprovalStatus` objects.
    """

    exit_code = 9

    def __init__(self, message: str, *, missing: Sequence[object] = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.missing = list(missing)
