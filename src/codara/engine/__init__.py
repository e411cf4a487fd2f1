"""Durable execution: workflows, runs, steps, waits, timers, the queue and its workers."""

from __future__ import annotations

from codara.engine._app import App, new_run_id
from codara.engine._client import Client
from codara.engine._context import Context, Step
from codara.engine._effects import Effect, EffectCall, EffectFailedError, EffectRefused
from codara.engine._executor import Outcome, Workflow
from codara.engine._journal import operator_name
from codara.engine._mcp import mcp_read
from codara.engine._retry import NO_RETRY, RetryPolicy
from codara.engine._signals import (
    RESERVED_SIGNAL_PREFIXES,
    REVIEW_SIGNAL_PREFIX,
    check_signal_name,
)
from codara.engine._worker import Worker

__all__ = [
    "NO_RETRY",
    "RESERVED_SIGNAL_PREFIXES",
    "REVIEW_SIGNAL_PREFIX",
    "App",
    "Client",
    "Context",
    "Effect",
    "EffectCall",
    "EffectFailedError",
    "EffectRefused",
    "Outcome",
    "RetryPolicy",
    "Step",
    "Worker",
    "Workflow",
    "check_signal_name",
    "mcp_read",
    "new_run_id",
    "operator_name",
]
