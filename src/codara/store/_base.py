"""What every store backend offers, and the SQL both backends share.

Codara's own statements are written once with ``?`` placeholders; the PostgreSQL backend
rewrites them to ``%s``. Only ``codara.store`` talks SQL to Codara's own tables.

User SQL is never rewritten. The :class:`Tx` handed to a ``ctx.transaction`` body passes the
SQL text to the driver as written (``LIKE 'A%'``, a literal ``'?'``, ``::text`` casts mean what
they say). Its portable parameters are named, ``:name`` with a mapping, compiled for the
dialect by SQLAlchemy's ``text()`` (once per statement string); positional parameters use
the driver's own style (``?`` on SQLite, ``%s`` on PostgreSQL). Codara's own code that works
inside such a transaction (a review gate creating its review) takes :func:`own_sql` of it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from codara.errors import ConflictError, WorkflowCodeError
from codara.store import _local_wake
from codara.store._notify_pg import wake_sql
from codara.store._types import JOURNAL_COLUMNS, RUN_COLUMNS, Claim, JournalRecord, RunRecord

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

__all__ = ["FencedError", "Params", "Store", "Tx", "own_sql"]

Params = Sequence[Any] | Mapping[str, Any]
"""Statement parameters: a mapping for ``:name`` placeholders, or a sequence for the
driver's positional ones."""


class FencedError(ConflictError):
    """This worker no longer owns the run (its lease was taken over or the run cancelled)."""

    code = "fenced"

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id}: this worker no longer owns it (its lease was taken over or the "
            "run was cancelled); nothing more was written",
            hint="nothing to do: the run's new owner carries on from its journal",
        )
        self.run_id = run_id


class Tx(abc.ABC):
    """A transaction handed to a transactional step: its writes commit with the journal row.

    The SQL text reaches the driver untouched. Parameters:

    - a mapping: named placeholders ``:name``, the same SQL on SQLite and PostgreSQL
      (``\\:`` is a literal colon; ``::`` casts are left alone; write ``CAST(:v AS text)``
      rather than ``:v::text``);
    - a non-empty sequence: the driver's positional style, ``?`` on SQLite and ``%s`` on
      PostgreSQL (where a literal ``%`` is then written ``%%``, as psycopg wants);
    - none: the statement as it is, no placeholders at all.
    """

    dialect: str
    wakes = False
    """Set by :meth:`wake_on_commit`: the backend wakes this process's workers after COMMIT."""

    def wake_on_commit(self) -> None:
        """This transaction makes a run ready: once it commits, this process's idle workers
        on the database look for work at once (:mod:`codara.store._local_wake`)."""
        self.wakes = True

    async def for_update(self) -> None:
        """What this transaction reads from now on stays as read until it commits: it is
        about to change it. SQLite takes its write lock here (so a concurrent writer waits,
        rather than making the read stale); PostgreSQL locks the rows it then reads with
        ``FOR UPDATE`` instead, so this does nothing there."""
        return  # PostgreSQL and the transactions that already write: nothing to take

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the affected row count."""
        text, args = bind(self.dialect, sql, params)
        return await self._execute(text, args)

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a query and return its rows."""
        text, args = bind(self.dialect, sql, params)
        return await self._fetchall(text, args)

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Any) -> int:
        """Send ``sql`` as it is, with driver-ready ``params`` (tuple, dict or None)."""

    @abc.abstractmethod
    async def _fetchall(self, sql: str, params: Any) -> list[tuple[Any, ...]]: ...

    def _own_sql(self, sql: str) -> str:
        """Codara's own ``?`` SQL in the driver's positional style."""
        return sql


class _OwnSQL(Tx):
    """The same transaction, for Codara's own constant SQL written with ``?``."""

    def __init__(self, inner: Tx) -> None:
        self.inner = inner
        self.dialect = inner.dialect

    def wake_on_commit(self) -> None:
        self.inner.wake_on_commit()  # the backend looks at the transaction it opened

    async def for_update(self) -> None:
        await self.inner.for_update()

    async def execute(self, sql: str, params: Params = ()) -> int:
        if isinstance(params, Mapping):
            return await self.inner.execute(sql, params)
        return await self.inner._execute(self.inner._own_sql(sql), tuple(params) or None)

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        if isinstance(params, Mapping):
            return await self.inner.fetchall(sql, params)
        return await self.inner._fetchall(self.inner._own_sql(sql), tuple(params) or None)

    async def _execute(self, sql: str, params: Any) -> int:
        return await self.inner._execute(sql, params)

    async def _fetchall(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        return await self.inner._fetchall(sql, params)


def own_sql(tx: Tx) -> Tx:
    """``tx`` for Codara's own statements (``?`` placeholders on every backend)."""
    return tx if isinstance(tx, _OwnSQL) else _OwnSQL(tx)


@functools.cache
def _dialect(name: str) -> Dialect:
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql.psycopg import dialect as pg_dialect

        return pg_dialect()  # type: ignore[no-untyped-call]
    from sqlalchemy.dialects.sqlite.pysqlite import dialect as sqlite_dialect

    return sqlite_dialect()


@functools.lru_cache(maxsize=1024)
def _compile(dialect: str, sql: str) -> tuple[str, tuple[str, ...], bool]:
    """``sql`` with ``:name`` placeholders in the dialect's style: (text, names, positional)."""
    from sqlalchemy import text

    compiled = text(sql).compile(dialect=_dialect(dialect))
    if compiled.positional:
        return compiled.string, tuple(compiled.positiontup or ()), True
    return compiled.string, tuple(compiled.binds), False


def bind(dialect: str, sql: str, params: Params) -> tuple[str, Any]:
    """The SQL and parameters to hand the driver for user ``sql`` with ``params``."""
    if isinstance(params, Mapping):
        text, names, positional = _compile(dialect, sql)
        missing = sorted({n for n in names if n not in params})
        if missing:
            given = ", ".join(sorted(map(str, params))) or "none"
            raise WorkflowCodeError(
                "the SQL names "
                + ", ".join(f":{n}" for n in missing)
                + f" but the parameters have no value for it (given: {given})",
                hint="pass a value for every :name in the mapping, or write \\: for a "
                "literal colon",
            )
        if positional:
            return text, tuple(params[n] for n in names)
        return text, {n: params[n] for n in names}
    if isinstance(params, str | bytes):
        raise WorkflowCodeError(
            "SQL parameters must be a mapping or a sequence of values, not a string",
            hint="write (value,) for one positional parameter, or {'name': value}",
        )
    args = tuple(params)
    return sql, (args if args else None)


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
# A `cancelling` run stays `cancelling` while a worker undoes its effects; it had an owner
# when claimed only if that worker's lease lapsed.
CLAIM_SET = (
    "status = CASE WHEN status = 'cancelling' THEN 'cancelling' ELSE 'running' END, "
    "owner = ?, token = token + 1, attempts = attempts + 1, "
    "claim_streak = CASE WHEN status = 'running' OR (status = 'cancelling' AND owner IS NOT "
    "NULL) THEN claim_streak + 1 ELSE 1 END, ready_at = ?, updated_at = ?"
)
CLAIM_RETURNING = "id, workflow, version, input, token, signal_version, claim_streak, status"
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
RUN_STATUS = "SELECT status FROM codara_runs WHERE id = ?"
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
    "UPDATE codara_runs SET status = CASE WHEN status = 'cancelling' THEN 'cancelling' "
    "ELSE 'queued' END, ready_at = ?, owner = NULL, error = ?, "
    "updated_at = ? WHERE id = ? AND token = ? AND status IN ('running', 'cancelling')"
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
    "WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled', 'cancelling')"
)
# A run with effects done is cancelled by a worker, which undoes them first (docs/effects.md)
CANCEL_TO_UNDO = (
    "UPDATE codara_runs SET status = 'cancelling', ready_at = ?, owner = NULL, "
    "token = token + 1, waiting_for = NULL, updated_at = ? "
    "WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled', 'cancelling') "
    "AND EXISTS (SELECT 1 FROM codara_journal WHERE run_id = ? AND kind = 'effect' "
    "AND status = 'ok')"
)
HEARTBEAT = (
    "UPDATE codara_runs SET ready_at = ?, updated_at = ? "
    "WHERE owner = ? AND status IN ('running', 'cancelling') AND {ids}"
)
OWNED = (
    "SELECT id FROM codara_runs WHERE owner = ? AND status IN ('running', 'cancelling') AND {ids}"
)


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
    id_, workflow, version, input_, token, signal_version, streak, status = row
    return Claim(id_, workflow, version, input_, token, signal_version, streak,
                 cancelling=status == "cancelling")  # fmt: skip


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
    tx.wake_on_commit()  # and this process's workers at once, on every database
    return True


class Store(abc.ABC):
    """Durable state of runs. One instance per process; safe across many processes."""

    dialect: str
    url_redacted: str

    @abc.abstractmethod
    async def close(self) -> None: ...

    @property
    def wake_key(self) -> str:
        """Names the database for wake-ups inside this process (the same for every store
        object opened on it)."""
        return self.url_redacted

    @contextlib.asynccontextmanager
    async def wakeups(self) -> AsyncIterator[asyncio.Event | None]:
        """While open: an event set when a run may have become ready. This process's own
        writes set it right after they commit (:mod:`codara.store._local_wake`); on
        PostgreSQL other processes' writes set it too (LISTEN/NOTIFY)."""
        with _local_wake.listening(self.wake_key, asyncio.Event()) as event:
            yield event

    def woke(self, tx: Tx | None = None) -> None:
        """A write that made a run ready has committed (in ``tx``, if given, only if it asked
        for it): wake this process's idle workers on the database."""
        if tx is None or tx.wakes:
            _local_wake.notify(self.wake_key)

    # -- runs -------------------------------------------------------------------------------
    @abc.abstractmethod
    def tx(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction for multi-statement work outside the hot path (reviews, users).

        It is Codara's own: ``?`` placeholders with a sequence, on every backend
        (:func:`own_sql`); named parameters work as in :class:`Tx`."""

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
        """Run ``body`` and write its journal row in one transaction (exactly once).

        Raises FencedError only when the run is no longer this token's (or the row's seq is
        taken: the journal's own primary key); an error raised by ``body`` propagates
        unchanged, except a lost connection (StoreUnavailableError)."""

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
        """Cancel a run that is not finished; fences its current owner. A run with effects
        done becomes ``cancelling`` (a worker undoes them, then marks it ``cancelled``).
        False if finished."""

    @abc.abstractmethod
    async def execute_raw(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run SQL with ``?`` placeholders outside the engine (tests, audit tooling)."""
