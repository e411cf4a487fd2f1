"""What every store backend offers, and the SQL both backends share.

Statements are written once with ``?`` placeholders; the PostgreSQL backend rewrites them
to ``%s``. Only ``codara.store`` talks SQL to Codara's own tables.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from codara.errors import ConflictError
from codara.store._notify_pg import wake_sql
from codara.store._types import JOURNAL_COLUMNS, RUN_COLUMNS, Claim, JournalRecord, RunRecord

__all__ = ["FencedError", "Store", "Tx"]


class FencedError(Exception):
    """This worker no longer owns the run (its lease was taken over or the run cancelled)."""


class Tx(abc.ABC):
    """A transaction handed to a transactional step: its writes commit with the journal row."""

    dialect: str

    @abc.abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement with ``?`` placeholders; return the affected row count."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query with ``?`` placeholders and return its rows."""


RowBuilder = Callable[[str | None], JournalRecord]
HeadBuilder = Callable[[JournalRecord | None], JournalRecord]
NewRun = tuple[str, str, str, str, str | None, str, str | None]

INSERT_RUN = (
    "INSERT INTO codara_runs (id, workflow, version, workflow_key, status, input, ready_at, "
    "idempotency_key, genesis_hash, created_at, updated_at, started_by) "
    "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_RUN_BY_KEY = "SELECT id, input FROM codara_runs WHERE workflow = ? AND idempotency_key = ?"
# Claiming: a run still `running` when claimed had a lease that lapsed (its worker was killed
# or stalled): the streak grows. Any other status means the last claim ended cleanly.
CLAIM_SET = (
    "status = 'running', owner = ?, token = token + 1, attempts = attempts + 1, "
    "claim_streak = CASE WHEN status = 'running' THEN claim_streak + 1 ELSE 1 END, "
    "ready_at = ?, updated_at = ?"
)
CLAIM_RETURNING = "id, workflow, version, input, token, signal_version, claim_streak"
RETRY_RUN = (
    "UPDATE codara_runs SET status = 'queued', ready_at = ?, owner = NULL, output = NULL, "
    "error = NULL, waiting_for = NULL, claim_streak = 0, finished_at = NULL, updated_at = ? "
    "WHERE id = ? AND status = 'failed'"
)
JOURNAL_HEAD = (
    f"SELECT {JOURNAL_COLUMNS} FROM codara_journal WHERE run_id = ? ORDER BY seq DESC LIMIT 1"
)
INSERT_JOURNAL = (
    "INSERT INTO codara_journal (run_id, seq, op, kind, name, status, input, output, error, "
    "started_at, finished_at, attempts, prev_hash, hash, branch) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_RUN = f"SELECT {RUN_COLUMNS} FROM codara_runs WHERE id = ?"
SELECT_JOURNAL = f"SELECT {JOURNAL_COLUMNS} FROM codara_journal WHERE run_id = ? ORDER BY seq"
FINISH_RUN = (
    "UPDATE codara_runs SET status = ?, output = ?, error = ?, ready_at = NULL, owner = NULL, "
    "waiting_for = NULL, updated_at = ?, finished_at = ? WHERE id = ? AND token = ?"
)
SUSPEND_RUN = (
    "UPDATE codara_runs SET status = ?, ready_at = ?, waiting_for = ?, owner = NULL, "
    "updated_at = ? WHERE id = ? AND token = ? AND signal_version = ?"
)
RELEASE_RUN = (
    "UPDATE codara_runs SET status = 'queued', ready_at = ?, owner = NULL, error = ?, "
    "updated_at = ? WHERE id = ? AND token = ? AND status = 'running'"
)
FIND_SIGNAL = (
    "SELECT id, payload FROM codara_signals WHERE run_id = ? AND name = ? "
    "AND consumed_seq IS NULL ORDER BY id LIMIT 1"
)
CONSUME_SIGNAL = "UPDATE codara_signals SET consumed_seq = ? WHERE id = ?"
INSERT_SIGNAL = "INSERT INTO codara_signals (run_id, name, payload, created_at) VALUES (?, ?, ?, ?)"
WAKE_ON_SIGNAL = (
    "UPDATE codara_runs SET signal_version = signal_version + 1, "
    "status = CASE WHEN status = 'waiting' THEN 'queued' ELSE status END, "
    "ready_at = CASE WHEN status = 'waiting' THEN ? ELSE ready_at END, updated_at = ? "
    "WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')"
)
CANCEL_RUN = (
    "UPDATE codara_runs SET status = 'cancelled', ready_at = NULL, owner = NULL, "
    "token = token + 1, updated_at = ?, finished_at = ? "
    "WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')"
)
HEARTBEAT = (
    "UPDATE codara_runs SET ready_at = ?, updated_at = ? "
    "WHERE owner = ? AND status = 'running' AND id IN ({ids})"
)
OWNED = "SELECT id FROM codara_runs WHERE owner = ? AND status = 'running' AND id IN ({ids})"


def journal_params(r: JournalRecord) -> tuple[Any, ...]:
    return (
        r.run_id,
        r.seq,
        r.op,
        r.kind,
        r.name,
        r.status,
        r.input,
        r.output,
        r.error,
        r.started_at,
        r.finished_at,
        r.attempts,
        r.prev_hash,
        r.hash,
        r.branch,
    )


def same_input(stored: str, given: str) -> bool:
    """Two inputs (JSON texts) are the same document, whatever the order of their keys."""
    return stored == given or json.dumps(json.loads(stored), sort_keys=True) == json.dumps(
        json.loads(given), sort_keys=True
    )


def key_conflict(workflow: str, key: str, run_id: str) -> ConflictError:
    return ConflictError(
        f"idempotency key {key!r} of workflow {workflow!r} already started run {run_id} "
        "with a different input",
        hint=f"use a new key for a new input; the same key with the same input returns "
        f"run {run_id}",
    )


def run_from_row(row: Sequence[Any]) -> RunRecord:
    return RunRecord(*row)


def journal_from_row(row: Sequence[Any]) -> JournalRecord:
    return JournalRecord(*row)


def claim_from_row(row: Sequence[Any]) -> Claim:
    return Claim(*row)


def filters(
    status: str | None, workflow: str | None, before: float | None
) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    params: list[Any] = []
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    if workflow is not None:
        clauses.append("workflow = ?")
        params.append(workflow)
    if before is not None:
        clauses.append("created_at < ?")
        params.append(before)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return where, tuple(params)


async def signal_run(tx: Tx, run_id: str, name: str, payload: str | None, now: float) -> bool:
    """Store a signal and wake the run if it waits, inside ``tx`` (with whatever else the
    transaction decides, e.g. a review). False if the run is finished or unknown."""
    wake = WAKE_ON_SIGNAL
    if tx.dialect == "postgresql":
        wake = wake.replace("THEN ? ELSE", "THEN CAST(? AS DOUBLE PRECISION) ELSE")
    if await tx.execute(wake, (now, now, run_id)) != 1:
        return False
    await tx.execute(INSERT_SIGNAL, (run_id, name, payload, now))
    notify = wake_sql(tx.dialect)
    if notify is not None:  # idle workers hear of it when the decision commits
        await tx.execute(notify)
    return True


class Store(abc.ABC):
    """Durable state of runs. One instance per process; safe across many processes."""

    dialect: str
    url_redacted: str

    @abc.abstractmethod
    async def close(self) -> None: ...

    def wakeups(self) -> AbstractAsyncContextManager[asyncio.Event | None]:
        """While open: an event set when another process may have made a run ready
        (PostgreSQL LISTEN/NOTIFY), or None where a worker can only poll (SQLite)."""
        return contextlib.nullcontext(None)

    # -- runs -------------------------------------------------------------------------------
    @abc.abstractmethod
    def tx(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction for multi-statement work outside the hot path (reviews, users)."""

    @abc.abstractmethod
    async def create_runs(self, rows: Sequence[NewRun], now: float) -> list[str]:
        """Enqueue runs: (id, workflow, version, input_json, idempotency_key, genesis_hash,
        started_by).

        Returns the ids in order; an idempotency key already used returns the earlier run.
        """

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None: ...

    @abc.abstractmethod
    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunRecord]: ...

    @abc.abstractmethod
    async def count_runs(self, *, workflow: str | None = None) -> dict[str, int]: ...

    @abc.abstractmethod
    async def journal(self, run_id: str) -> list[JournalRecord]: ...

    @abc.abstractmethod
    async def run_ids(self, *, after: str | None, limit: int) -> list[str]:
        """All run ids in id order, paged (for audit verification)."""

    # -- the worker's hot path --------------------------------------------------------------
    @abc.abstractmethod
    async def claim(
        self,
        owner: str,
        workflow_keys: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        run_id: str | None = None,
    ) -> list[Claim]: ...

    @abc.abstractmethod
    async def append(self, run_id: str, token: int, record: JournalRecord) -> None:
        """Write one journal row if ``token`` still owns the run, else raise FencedError."""

    @abc.abstractmethod
    async def finish(
        self,
        run_id: str,
        token: int,
        status: str,
        output: str | None,
        error: str | None,
        record: JournalRecord,
        now: float,
    ) -> None: ...

    @abc.abstractmethod
    async def suspend(
        self,
        run_id: str,
        token: int,
        status: str,
        ready_at: float | None,
        waiting_for: str | None,
        signal_version: int,
        now: float,
    ) -> int | None:
        """Park a run. Returns None on success, or the current signal version when a signal
        arrived meanwhile (the caller looks again). Raises FencedError if no longer owned."""

    @abc.abstractmethod
    async def release(
        self, run_id: str, token: int, ready_at: float, note: str | None, now: float
    ) -> None: ...

    @abc.abstractmethod
    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], lease_until: float, now: float
    ) -> set[str]:
        """Extend the leases ``owner`` holds on ``run_ids`` (the runs it is executing);
        return those it still owns."""

    @abc.abstractmethod
    async def consume_signal(
        self, run_id: str, token: int, name: str, seq: int, build: RowBuilder
    ) -> JournalRecord | None:
        """Take the oldest unread signal ``name`` and journal it at ``seq``, atomically."""

    @abc.abstractmethod
    async def transaction(
        self,
        run_id: str,
        token: int,
        body: Callable[[Tx], Awaitable[Any]],
        build: Callable[[Any], JournalRecord],
    ) -> tuple[Any, JournalRecord]:
        """Run ``body`` and write its journal row in one transaction (exactly once)."""

    # -- operators: retry and fork ---------------------------------------------------------
    @abc.abstractmethod
    async def retry_run(self, run_id: str, build: HeadBuilder, now: float) -> JournalRecord | None:
        """Queue a ``failed`` run again and append the row ``build(journal head)`` makes, in one
        transaction. None (and nothing written) if the run is not ``failed``."""

    @abc.abstractmethod
    async def fork_run(self, run: NewRun, rows: Sequence[JournalRecord], now: float) -> None:
        """Insert a new queued run with its first journal ``rows``, in one transaction."""

    # -- from outside a worker ---------------------------------------------------------------
    @abc.abstractmethod
    async def send_signal(self, run_id: str, name: str, payload: str | None, now: float) -> bool:
        """Store a signal and wake the run if it waits. False if the run is finished."""

    @abc.abstractmethod
    async def cancel(self, run_id: str, now: float) -> bool:
        """Cancel a run that is not finished; fences its current owner. False if finished."""

    @abc.abstractmethod
    async def execute_raw(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run SQL with ``?`` placeholders outside the engine (tests, audit tooling)."""
