"""Codara: the orchestration layer that takes an AI use case from pilot to production.

The public names are loaded on first use (PEP 562), so that ``import codara.cli`` and
``codara --help`` do not pay for the engine, the store and their dependencies
(docs/architecture.md, "Start-up"). ``from codara import App`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from codara.engine import (
        App,
        Client,
        Context,
        Effect,
        EffectCall,
        EffectRefused,
        RetryPolicy,
        Step,
        mcp_read,
    )
    from codara.store import Tx

__all__ = [
    "App",
    "Client",
    "CodaraError",
    "ConfigError",
    "ConflictError",
    "Context",
    "Effect",
    "EffectCall",
    "EffectRefused",
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
    "mcp_read",
]

__version__ = "0.1.0"

_LAZY = {
    "App": "codara.engine",
    "Client": "codara.engine",
    "Context": "codara.engine",
    "Effect": "codara.engine",
    "EffectCall": "codara.engine",
    "EffectRefused": "codara.engine",
    "RetryPolicy": "codara.engine",
    "Step": "codara.engine",
    "Tx": "codara.store",
    "mcp_read": "codara.engine",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'codara' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
