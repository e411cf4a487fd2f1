"""Durable execution: workflows, runs, steps, waits, timers, the queue and its workers."""

from __future__ import annotations

from codara.engine._app import App, new_run_id
from codara.engine._context import Context
from codara.engine._executor import Outcome, Workflow
from codara.engine._journal import operator_name
from codara.engine._retry import NO_RETRY, RetryPolicy
from codara.engine._worker import Worker

__all__ = [
    "NO_RETRY",
    "App",
    "Context",
    "Outcome",
    "RetryPolicy",
    "Worker",
    "Workflow",
    "new_run_id",
    "operator_name",
]
