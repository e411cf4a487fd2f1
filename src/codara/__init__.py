"""Codara: the orchestration layer that takes an AI use case from pilot to production."""

from __future__ import annotations

from codara.engine import App, Context, RetryPolicy, Step
from codara.errors import (
    CodaraError,
    ConfigError,
    ConflictError,
    InputError,
    NonDeterminismError,
    NotFoundError,
    RunError,
    StepFailedError,
    WaitTimeoutError,
    WorkflowVersionError,
)
from codara.store import Tx

__all__ = [
    "App",
    "CodaraError",
    "ConfigError",
    "ConflictError",
    "Context",
    "InputError",
    "NonDeterminismError",
    "NotFoundError",
    "RetryPolicy",
    "RunError",
    "Step",
    "StepFailedError",
    "Tx",
    "WaitTimeoutError",
    "WorkflowVersionError",
]

__version__ = "0.1.0"
