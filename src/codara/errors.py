"""Codara's exception tree.

Every error Codara raises derives from :class:`CodaraError`. Each class carries a stable
``code`` (for logs and the API), an HTTP status and a CLI exit code, so the three always
agree. The tree is split by who has to act, as pydantic-ai does::

    CodaraError
    ├── UserError                  the person running Codara must fix something
    │   ├── ConfigError            codara.toml, environment, a policy
    │   ├── InputError             a malformed input file, JSON or argument
    │   ├── UnknownWorkflowError   no workflow of that name is registered
    │   ├── NotFoundError          no run / review / user with that id
    │   ├── NotOpenError           an App or Client used outside `async with`
    │   ├── ForbiddenError         the caller may not do this (a role, four-eyes)
    │   │   └── ReservedSignalError  a signal name only Codara itself sends (review:)
    │   └── ScopeError             a read outside what its source allows (refused, with why)
    ├── StoreError                 our own database
    │   ├── DatabaseUnreachableError
    │   ├── StoreUnavailableError  a transient failure (connection lost, database locked)
    │   └── SchemaOutOfDateError   run `codara db upgrade`
    ├── WorkflowCodeError          a mistake in workflow code
    │   ├── NonDeterminismError    a replay took another path than the journal
    │   └── WorkflowVersionError   the journal was written by a version this worker lacks
    ├── ConflictError              the state changed under you (HTTP 409)
    │   └── FencedError            (codara.store) this worker no longer owns the run
    └── RunError                   a run failed while doing its work
        ├── StepFailedError        a step raised (after its retries)
        ├── WaitTimeoutError       a durable wait reached its timeout
        ├── StepTimeoutError       a step ran longer than its timeout
        ├── PoisonRunError         a run crashed its worker too many times in a row
        ├── RunWaitTimeoutError    wait_run gave up before the run finished
        ├── ModelCallError         a model provider failed
        ├── SourceError            a data source failed to answer (unreachable, bad reply)
        │   └── StaleDataError     a read refused because the data is older than allowed
        └── ToolError              an MCP tool call failed (server away, isError, malformed)

Errors that must not be retried carry ``non_retryable = True`` (as temporalio does).
"""

from __future__ import annotations

from typing import ClassVar, Literal

__all__ = [
    "CodaraError",
    "ConfigError",
    "ConflictError",
    "DatabaseUnreachableError",
    "ForbiddenError",
    "InputError",
    "ModelCallError",
    "NonDeterminismError",
    "NotFoundError",
    "NotOpenError",
    "PayloadTooLargeError",
    "PoisonRunError",
    "ReservedSignalError",
    "RunError",
    "RunWaitTimeoutError",
    "SchemaOutOfDateError",
    "ScopeError",
    "SourceError",
    "StaleDataError",
    "StepFailedError",
    "StepTimeoutError",
    "StoreError",
    "StoreUnavailableError",
    "ToolError",
    "UnknownWorkflowError",
    "UserError",
    "WaitTimeoutError",
    "WorkflowCodeError",
    "WorkflowVersionError",
]


class CodaraError(Exception):
    """Base of every error Codara raises.

    ``message`` says what happened; ``hint`` says what to do about it.
    """

    code: ClassVar[str] = "codara_error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1
    non_retryable: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message

    def to_dict(self) -> dict[str, str | None]:
        """The error as the API and ``--json`` output show it."""
        return {"code": self.code, "message": self.message, "hint": self.hint}


class UserError(CodaraError):
    code = "user_error"
    http_status = 400
    exit_code = 2
    non_retryable = True


class ConfigError(UserError):
    code = "config_error"
    exit_code = 3


class InputError(UserError):
    code = "input_error"
    http_status = 422
    exit_code = 4


class UnknownWorkflowError(UserError):
    code = "unknown_workflow"
    http_status = 404
    exit_code = 5


class NotFoundError(UserError):
    code = "not_found"
    http_status = 404
    exit_code = 6


class StoreError(CodaraError):
    code = "store_error"
    http_status = 503
    exit_code = 7


class DatabaseUnreachableError(StoreError):
    code = "database_unreachable"
    exit_code = 8


class StoreUnavailableError(StoreError):
    """A transient store failure: the connection dropped, the server restarted, the database
    is locked. The engine hands the run back and tries again; it is never a run failure."""

    code = "store_unavailable"
    exit_code = 8


class SchemaOutOfDateError(StoreError):
    code = "schema_out_of_date"
    exit_code = 9
    non_retryable = True


class WorkflowCodeError(CodaraError):
    code = "workflow_code_error"
    exit_code = 10
    non_retryable = True


class NonDeterminismError(WorkflowCodeError):
    code = "non_determinism"


class WorkflowVersionError(WorkflowCodeError):
    code = "workflow_version"
    exit_code = 11


class ConflictError(CodaraError):
    code = "conflict"
    http_status = 409
    exit_code = 12
    non_retryable = True


class RunError(CodaraError):
    code = "run_error"
    exit_code = 13


class StepFailedError(RunError):
    """A step raised; ``error_type`` names the original exception class."""

    code = "step_failed"

    def __init__(
        self,
        step: str,
        error_type: str,
        error_message: str,
        *,
        non_retryable: bool = False,
    ) -> None:
        super().__init__(f"step {step!r} failed: {error_type}: {error_message}")
        self.step = step
        self.error_type = error_type
        self.error_message = error_message
        self.non_retryable = non_retryable


class WaitTimeoutError(RunError, TimeoutError):
    code = "wait_timeout"

    def __init__(self, signal: str, timeout: float | None) -> None:
        super().__init__(f"no signal {signal!r} arrived within {timeout} s")
        self.signal = signal
        self.timeout = timeout


class StepTimeoutError(RunError, TimeoutError):
    code = "step_timeout"

    def __init__(self, step: str, timeout: float) -> None:
        super().__init__(f"step {step!r} ran longer than its timeout of {timeout} s")
        self.step = step
        self.timeout = timeout


class PoisonRunError(RunError):
    code = "poison_run"
    non_retryable = True


class ModelCallError(RunError):
    code = "model_call_failed"
    http_status = 502


class ForbiddenError(UserError):
    """The caller may not do this: they lack the role, or four-eyes forbids it."""

    code = "forbidden"
    http_status = 403
    exit_code = 14


class ReservedSignalError(ForbiddenError):
    """A signal name under a reserved prefix (``review:``): only Codara sends those, from
    inside the transaction that records what they announce (a review decision)."""

    code = "reserved_signal"


class NotOpenError(UserError):
    """An App or Client used before ``async with`` (or ``await open()``) or after closing."""

    code = "not_open"


class RunWaitTimeoutError(RunError, TimeoutError):
    """``wait_run`` gave up: the run is not finished yet (it goes on; wait again later)."""

    code = "run_wait_timeout"
    non_retryable = True


class PayloadTooLargeError(InputError):
    """A request body (or a part of it, such as a signal's payload) over its size limit."""

    code = "payload_too_large"
    http_status = 413


class ScopeError(UserError):
    """A read a source's scope does not allow: a table, column, endpoint or path outside
    what it declares, a write, a second statement, a system catalogue. Never retried: the
    same request is refused again. ``reason`` is the one-line why; ``rule`` a stable id for
    code (``table``, ``column``, ``write``, ``statements``, ``function``, ``path``...)."""

    code = "scope_refused"
    http_status = 403
    exit_code = 15
    non_retryable = True

    def __init__(self, message: str, *, rule: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.rule = rule


class SourceError(RunError):
    """A data source did not answer usably: unreachable, timed out, refused the
    credentials, or sent what cannot be read (not a record's fault: those are quarantined).
    Retried by the step's retry policy unless ``non_retryable``."""

    code = "source_failed"
    http_status = 502
    exit_code = 16


class StaleDataError(SourceError):
    """The source's newest data is older than its freshness limit, and the source is
    configured to refuse such reads (``on_stale = "refuse"``)."""

    code = "stale_data"
    non_retryable = True


class ToolError(RunError):
    """An MCP tool call failed: the server could not be started or reached, went away or
    timed out during the call, reported an error (``isError``), or returned a result that
    breaks the tool's output schema; or the call was refused before it was sent (its
    arguments do not match the tool's input schema).

    ``outcome`` says what is known of an effect: ``refused`` (nothing was done: the call was
    refused before it was sent, or the server said it failed), ``unknown`` (it may have
    happened). ``non_retryable`` is set when the same call would fail the same way."""

    code = "tool_failed"
    http_status = 502
    exit_code = 16

    def __init__(
        self,
        message: str,
        *,
        outcome: Literal["refused", "unknown"] = "unknown",
        non_retryable: bool = False,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.outcome = outcome
        self.non_retryable = non_retryable
