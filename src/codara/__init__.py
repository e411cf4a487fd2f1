"""Codara: the orchestration layer that takes an AI use case from pilot to production."""

from __future__ import annotations

from codara.engine import App, Client, Context, RetryPolicy, Step
from codara.errors import (
    CodaraError,
    ConfigError,
    ConflictError,
    InputError,
    NonDeterminismError,
    NotFoundError,
    RunError,
    StepFailedError,
    UnknownWorkflowError,
    WaitTimeoutError,
    WorkflowVersionError,
)
from codara.store import Tx

__all__ = [
    "App",
    "Client",
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
    "UnknownWorkflowError",
    "WaitTimeoutError",
    "WorkflowVersionError",
]

__version__ = "0.1.0"
