"""PostgreSQL backend: psycopg 3 with native async, prepared statements and a pool.

Claims use ``FOR UPDATE SKIP LOCKED`` so that many workers on many machines take disjoint
runs without waiting for each other. A journal append locks the run row ``FOR SHARE``: a
claim by another worker (which updates that row) is then ordered strictly before or after
the append, so a worker that lost its lease can never add a row after the new owner has read
the journal.

Connections (autocommit, ``prepare_threshold=0``) come from a small self-healing pool
(:mod:`codara.store._pgpool`). A connection that a server restart or a network cut broke is
discarded when it is handed back and the pool opens a new one in the background (with
backoff); the first such failure also has the pool test its idle connections, so that one
restart costs few calls. Taking a connection waits at most ``pool_timeout`` seconds. Every
connection-level failure (lost connection, server shutting down, no connection free in time)
leaves a store method as :class:`~codara.errors.StoreUnavailableError`: transient, the
engine hands the run back and retries. A unique violation means "fenced" only when it is the
journal's own primary key (``pk_codara_journal``: another owner wrote that seq); any other
database error of a transaction body is the body's error and propagates unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from codara.errors import DatabaseUnreachableError, StoreUnavailableError
from codara.store import _audit
from codara.store import _base as q
from codara.store._base import FencedError, RowBuilder, Store, Tx, own_sql
from codara.store._notify_pg import WAKE_SQL, WakeListener
from codara.store._pgpool import ConnectionPool, PoolTimeout
from codara.store._types import RUN_COLUMNS, Claim, JournalRecord, RunRecord
from codara.store._url import DatabaseURL

__all__ = ["PostgresStore"]

log = logging.getLogger("codara.store")

JOURNAL_KEY = "pk_codara_journal"
"""The journal's primary key (run_id, seq): its violation is the only "fenced" error."""

# Errors of the connection rather than of the statement: the server went away or is going,
# or refuses connections for now. (SQLSTATE class 08, admin/crash shutdown, cannot connect
# now, too many connections; None: a client-side failure such as a refused socket.)
_GONE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_DOWN_TIMEOUT = 1.0
"""The longest a call waits for a connection while the last attempt found the server away."""


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


def connection_lost(exc: BaseException, conn: psycopg.AsyncConnection[Any] | None = None) -> bool:
    """Whether ``exc`` says the connection (not the statement) failed."""
    if isinstance(exc, psycopg.InterfaceError | PoolTimeout):
        return True
    if conn is not None and (conn.closed or conn.broken):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _GONE_STATES
    return False


def _journal_key(exc: pg_errors.UniqueViolation) -> bool:
    return exc.diag.constraint_name == JOURNAL_KEY


_APPEND = _pg(
    "INSERT INTO codara_journal (run_id, seq, op, kind, name, status, input, output, error, "
    "started_at, finished_at, attempts, prev_hash, hash, branch) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
    "WHERE EXISTS (SELECT 1 FROM codara_runs WHERE id = ? AND token = ? FOR SHARE)"
)
_CLAIM = _pg(
    f"UPDATE codara_runs r SET {q.CLAIM_SET} FROM ("
    "SELECT id FROM codara_runs WHERE ready_at <= ? AND workflow_key = ANY(?) "
    "ORDER BY ready_at LIMIT ? FOR UPDATE SKIP LOCKED) c WHERE r.id = c.id "
    "RETURNING r.id, r.workflow, r.version, r.input, r.token, r.signal_version, r.claim_streak"
)
_CLAIM_ONE = _pg(
    f"UPDATE codara_runs SET {q.CLAIM_SET} "
    "WHERE id = ? AND ready_at IS NOT NULL AND ready_at <= ? AND workflow_key = ANY(?) "
    f"RETURNING {q.CLAIM_RETURNING}"
)
_HEARTBEAT = _pg(q.HEARTBEAT.format(ids="id IN (SELECT unnest(?::text[]))"))
_OWNED = _pg(q.OWNED.format(ids="id IN (SELECT unnest(?::text[]))"))


class _PgTx(Tx):
    dialect = "postgresql"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def _execute(self, sql: str, params: Any) -> int:
        cur = await self._conn.execute(sql, params)
        return cur.rowcount

    async def _fetchall(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        cur = await self._conn.execute(sql, params)
        return list(await cur.fetchall()) if cur.description else []

    def _own_sql(self, sql: str) -> str:
        return _pg(sql)


class _BodyFailed(Exception):
    """Carries an error of a transaction body past the connection's error translation."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


async def _append_row(
    conn: psycopg.AsyncConnection[Any], run_id: str, token: int, record: JournalRecord
) -> None:
    try:
        cur = await conn.execute(_APPEND, (*q.journal_params(record), run_id, token))
    except pg_errors.UniqueViolation as exc:
        if _journal_key(exc):  # another owner wrote this seq already
            raise FencedError(run_id) from exc
        raise
    if cur.rowcount != 1:
        raise FencedError(run_id)


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: DatabaseURL, pool: ConnectionPool) -> None:
        self.url_redacted = url.redacted()
        self._conninfo = url.pg_conninfo
        self._password = url.sqlalchemy_url.password
        self._pool = pool
        self._down = False

    @classmethod
    async def connect(
        cls,
        url: DatabaseURL,
        *,
        pool_size: int = 4,
        pool_timeout: float = 5.0,
        connect_timeout: int = 5,
    ) -> PostgresStore:
        """Open a pool of ``pool_size`` connections; DatabaseUnreachableError if that fails.
        ``pool_timeout``: the longest a store call waits for a free connection."""
        assert url.pg_conninfo is not None
        pool = ConnectionPool(
            url.pg_conninfo,
            pool_size,
            timeout=pool_timeout,
            connect_kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "connect_timeout": connect_timeout,
            },
        )
        try:
            await pool.open()
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachableError(
                f"cannot connect to the database {url.redacted()}: {_reason(exc, url)}",
                hint="is PostgreSQL running and the URL right? check host, port, user and "
                "database name",
            ) from exc
        return cls(url, pool)

    async def close(self) -> None:
        await self._pool.close()

    def _unavailable(self, exc: BaseException, waited: float = 0.0) -> StoreUnavailableError:
        if isinstance(exc, PoolTimeout):
            reason = (
                f"no connection became free within {waited:g} s (the pool has "
                f"{self._pool.size}; the server may be down or restarting)"
            )
        else:
            reason = _reason(exc, None, self._password)
        return StoreUnavailableError(
            f"the database {self.url_redacted} is unavailable: {reason}",
            hint="PostgreSQL may be restarting or out of reach; runs are handed back and "
            "retried when it is back. If this lasts, check that the server is up and reachable",
        )

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; connection-level failures become StoreUnavailableError.

        The pool takes the connection back in every case: one that a failure left broken
        or inside a transaction is discarded and replaced."""
        # While the server is known to be away, callers wait less for a connection: the API
        # answers 503 at once, a worker hands its run back sooner.
        timeout = min(self._pool.timeout, _DOWN_TIMEOUT) if self._down else self._pool.timeout
        try:
            conn = await self._pool.acquire(timeout)
        except PoolTimeout as exc:
            self._down = True
            raise self._unavailable(exc, timeout) from exc
        self._down = False
        try:
            yield conn
        except (psycopg.Error, OSError) as exc:
            if connection_lost(exc, conn):
                self._down = True
                self._pool.check_soon()
                raise self._unavailable(exc) from exc
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                raise self._unavailable(exc) from exc  # transient, e.g. a deadlock
            raise
        finally:
            self._pool.release(conn)

    @asynccontextmanager
    async def wakeups(self) -> AsyncIterator[asyncio.Event | None]:
        """One extra connection LISTENs for NOTIFY codara_wake while the worker runs."""
        assert self._conninfo is not None
        async with WakeListener(self._conninfo) as event:
            yield event

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        async with self._conn() as conn, conn.transaction():
            yield own_sql(_PgTx(conn))

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            cur = await conn.execute(sql, tuple(params) or None)
            return list(await cur.fetchall()) if cur.description else []

    async def _rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._conn() as conn:
            cur = await conn.execute(sql, tuple(params) or None)
            return cur.rowcount

    # -- runs ------------------------------------------------------------------------------
    async def create_runs(self, rows: Sequence[q.NewRun], now: float) -> list[str]:
        insert = (
            _pg(q.INSERT_RUN) + " ON CONFLICT (workflow, idempotency_key) DO NOTHING RETURNING id"
        )
        ids: list[str] = []
        async with self._conn() as conn, conn.transaction():
            for run_id, workflow, version, input_json, key, genesis, started_by in rows:
                cur = await conn.execute(
                    insert,
                    (
                        run_id,
                        workflow,
                        version,
                        f"{workflow}@{version}",
                        input_json,
                        now,
                        key,
                        genesis,
                        now,
                        now,
                        started_by,
                    ),
                )
                got = await cur.fetchone()
                if got is None:
                    assert key is not None
                    cur = await conn.execute(_pg(q.SELECT_RUN_BY_KEY), (workflow, key))
                    found = await cur.fetchone()
                    assert found is not None
                    if not q.same_input(found[1], input_json):
                        raise q.key_conflict(workflow, key, found[0])
                    got = found
                ids.append(got[0])
            await conn.execute(WAKE_SQL)  # delivered on commit: idle workers claim at once
        return ids

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._fetchall(_pg(q.SELECT_RUN), (run_id,))
        return q.run_from_row(rows[0]) if rows else None

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunRecord]:
        where, params = q.filters(status, workflow, before)
        sql = f"SELECT {RUN_COLUMNS} FROM codara_runs{where} ORDER BY created_at DESC LIMIT ?"
        return [q.run_from_row(r) for r in await self._fetchall(_pg(sql), (*params, limit))]

    async def count_runs(self, *, workflow: str | None = None) -> dict[str, int]:
        where, params = q.filters(None, workflow, None)
        sql = f"SELECT status, COUNT(*) FROM codara_runs{where} GROUP BY status"
        return {s: int(n) for s, n in await self._fetchall(_pg(sql), params)}

    async def journal(self, run_id: str) -> list[JournalRecord]:
        rows = await self._fetchall(_pg(q.SELECT_JOURNAL), (run_id,))
        return [q.journal_from_row(r) for r in rows]

    async def run_ids(self, *, after: str | None, limit: int) -> list[str]:
        rows = await self._fetchall(
            _pg("SELECT id FROM codara_runs WHERE id > ? ORDER BY id LIMIT ?"),
            (after or "", limit),
        )
        return [r[0] for r in rows]

    # -- hot path --------------------------------------------------------------------------
    async def claim(
        self,
        owner: str,
        workflow_keys: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        run_id: str | None = None,
    ) -> list[Claim]:
        if not workflow_keys:
            return []
        keys = list(workflow_keys)
        if run_id is not None:
            rows = await self._fetchall(_CLAIM_ONE, (owner, lease_until, now, run_id, now, keys))
        else:
            rows = await self._fetchall(_CLAIM, (owner, lease_until, now, now, keys, limit))
        return [q.claim_from_row(r) for r in rows]

    async def append(self, run_id: str, token: int, record: JournalRecord) -> None:
        async with self._conn() as conn:
            await _append_row(conn, run_id, token, record)

    async def finish(
        self,
        run_id: str,
        token: int,
        status: str,
        output: str | None,
        error: str | None,
        record: JournalRecord,
        now: float,
    ) -> None:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(
                _pg(q.FINISH_RUN), (status, output, error, now, now, run_id, token)
            )
            if cur.rowcount != 1:
                raise FencedError(run_id)
            await _append_row(conn, run_id, token, record)
            await _audit.record_finish(own_sql(_PgTx(conn)), record, status, now)

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
        n = await self._rowcount(
            _pg(q.SUSPEND_RUN),
            (status, ready_at, waiting_for, now, run_id, token, signal_version),
        )
        if n == 1:
            return None
        rows = await self._fetchall(
            _pg("SELECT token, signal_version FROM codara_runs WHERE id = ?"), (run_id,)
        )
        if not rows or rows[0][0] != token:
            raise FencedError(run_id)
        return int(rows[0][1])

    async def release(
        self, run_id: str, token: int, ready_at: float, note: str | None, now: float
    ) -> None:
        n = await self._rowcount(_pg(q.RELEASE_RUN), (ready_at, note, now, run_id, token))
        if n and ready_at <= now:  # handed back ready now (e.g. a worker shutting down)
            await self._rowcount(WAKE_SQL)

    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], lease_until: float, now: float
    ) -> set[str]:
        if not run_ids:
            return set()
        ids = list(run_ids)
        async with self._conn() as conn:
            await conn.execute(_HEARTBEAT, (lease_until, now, owner, ids))
            cur = await conn.execute(_OWNED, (owner, ids))
            return {r[0] for r in await cur.fetchall()}

    async def consume_signal(
        self, run_id: str, token: int, name: str, seq: int, build: RowBuilder
    ) -> JournalRecord | None:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(_pg(q.FIND_SIGNAL) + " FOR UPDATE", (run_id, name))
            found = await cur.fetchone()
            if found is None:
                return None
            await conn.execute(_pg(q.CONSUME_SIGNAL), (seq, found[0]))
            record = build(found[1])
            await _append_row(conn, run_id, token, record)
            return record

    async def transaction(
        self,
        run_id: str,
        token: int,
        body: Callable[[Tx], Awaitable[Any]],
        build: Callable[[Any], JournalRecord],
    ) -> tuple[Any, JournalRecord]:
        failed: Exception | None = None
        try:
            async with self._conn() as conn, conn.transaction():
                try:
                    result = await body(_PgTx(conn))
                except Exception as exc:
                    if connection_lost(exc, conn):
                        raise  # the store's failure, not the body's: StoreUnavailableError
                    raise _BodyFailed(exc) from exc
                record = build(result)
                await _append_row(conn, run_id, token, record)
                return result, record
        except _BodyFailed as carrier:
            failed = carrier.error
        assert failed is not None
        raise failed  # the body's own error, unchanged (raised here: no added context)

    # -- operators -------------------------------------------------------------------------
    async def retry_run(
        self, run_id: str, build: q.HeadBuilder, now: float
    ) -> JournalRecord | None:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(_pg(q.RETRY_RUN), (now, now, run_id))  # locks the run row
            if cur.rowcount != 1:
                return None
            cur = await conn.execute(_pg(q.JOURNAL_HEAD), (run_id,))
            head = await cur.fetchone()
            record = build(q.journal_from_row(head) if head else None)
            await conn.execute(_pg(q.INSERT_JOURNAL), q.journal_params(record))
            await conn.execute(WAKE_SQL)
            return record

    async def fork_run(self, run: q.NewRun, rows: Sequence[JournalRecord], now: float) -> None:
        run_id, workflow, version, input_json, key, genesis, started_by = run
        async with self._conn() as conn, conn.transaction():
            await conn.execute(
                _pg(q.INSERT_RUN),
                (run_id, workflow, version, f"{workflow}@{version}", input_json, now, key,
                 genesis, now, now, started_by),
            )  # fmt: skip
            async with conn.cursor() as cur:
                await cur.executemany(_pg(q.INSERT_JOURNAL), [q.journal_params(r) for r in rows])
            await conn.execute(WAKE_SQL)

    # -- from outside ----------------------------------------------------------------------
    async def send_signal(self, run_id: str, name: str, payload: str | None, now: float) -> bool:
        async with self.tx() as tx:
            return await q.signal_run(tx, run_id, name, payload, now)

    async def cancel(self, run_id: str, now: float) -> bool:
        async with self.tx() as tx:
            if await tx.execute(q.CANCEL_RUN, (now, now, run_id)) != 1:
                return False
            await _audit.record_cancel(tx, run_id, now)  # the chain ends here: audit evidence
            return True

    async def execute_raw(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._fetchall(_pg(sql), params)


def _reason(exc: BaseException, url: DatabaseURL | None, password: str | None = None) -> str:
    """The first line of a driver error, with the password (if any) blanked out."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    secret = password if password is not None else (url.sqlalchemy_url.password if url else None)
    if secret:
        reason = reason.replace(str(secret), "***")
    return reason
