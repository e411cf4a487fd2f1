"""Plain records the store hands to the layers above."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RUN_STATUSES", "TERMINAL_STATUSES", "Claim", "JournalRecord", "RunRecord"]

RUN_STATUSES = ("queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled")
TERMINAL_STATUSES = ("completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One row of a run's journal: a step, a wait, a signal, a model call, the result."""

    run_id: str
    seq: int
    op: int
    kind: str
    name: str
    status: str
    input: str | None
    output: str | None
    error: str | None
    started_at: float
    finished_at: float
    attempts: int
    prev_hash: str
    hash: str
    branch: str = ""  # "" = the workflow's own coroutine; "0.1" = a child task's child


@dataclass(frozen=True, slots=True)
class Claim:
    """A run this worker now owns, with the fencing token that proves it."""

    id: str
    workflow: str
    version: str
    input: str
    token: int
    signal_version: int
    streak: int = 1
    """Claims in a row without a clean end (this one included): 1 unless earlier claims'
    leases lapsed while the run was running (its worker was killed or stalled)."""
    cancelling: bool = False
    """The run was cancelled after effects happened: undo them, then end it cancelled."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    workflow: str
    version: str
    status: str
    input: str
    output: str | None
    error: str | None
    ready_at: float | None
    owner: str | None
    token: int
    waiting_for: str | None
    signal_version: int
    attempts: int
    idempotency_key: str | None
    genesis_hash: str
    created_at: float
    updated_at: float
    finished_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


RUN_COLUMNS = (
    "id, workflow, version, status, input, output, error, ready_at, owner, token, "
    "waiting_for, signal_version, attempts, idempotency_key, genesis_hash, created_at, "
    "updated_at, finished_at"
)
JOURNAL_COLUMNS = (
    "run_id, seq, op, kind, name, status, input, output, error, started_at, finished_at, "
    "attempts, prev_hash, hash, branch"
)
