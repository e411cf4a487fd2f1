"""PostgreSQL backend: psycopg 3 with native async, prepared statements and a pool.

The store's logic is :class:`~codara.store._sql.SQLStore`'s; this module is the driver's
part of it: the pool, the SQL flavour below, the error mapping and the hot-path ``append``.

Claims use ``FOR UPDATE SKIP LOCKED`` so that many workers on many machines take disjoint
runs without waiting for each other. A journal append locks the run row ``FOR SHARE``: a
claim by another worker (which updates that row) is then ordered strictly before or after
the append, so a worker that lost its lease can never add a row after the new owner has read
the journal.

The hot statements (the journal append and read, the claim, a group commit's statements)
go through :mod:`codara.store._pgwire`: prepared once per connection and sent through
libpq directly, which costs a fraction of psycopg's async ``execute`` in client CPU.

Connections (autocommit, ``prepare_threshold=0``, UTF-8) come from a small self-healing pool
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
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from codara.errors import DatabaseUnreachableError, StoreUnavailableError
from codara.store import _audit, _local_wake, _pgwire
from codara.store import _base as q
from codara.store._base import FencedError, Tx, own_sql
from codara.store._group import Finish, Write
from codara.store._notify_pg import WAKE_SQL, WakeListener
from codara.store._pgpool import ConnectionPool, PoolTimeout
from codara.store._sql import SQLStore, WriteParams
from codara.store._types import Claim, JournalRecord
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


@functools.lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """Codara's own ``?`` SQL in psycopg's ``%s`` style."""
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


_APPEND = (
    "INSERT INTO codara_journal (run_id, seq, op, kind, name, status, input, output, error, "
    "started_at, finished_at, attempts, prev_hash, hash, branch) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
    "WHERE EXISTS (SELECT 1 FROM codara_runs WHERE id = ? AND token = ? FOR SHARE)"
)
_JOURNAL_TYPES = (
    "text", "int4", "int4", "text", "text", "text", "text", "text", "text", "float8", "float8",
    "int4", "text", "text", "text", "int4",
)  # fmt: skip
_APPEND_PREPARED = _pgwire.Prepared(
    "codara_append_v1", _pgwire.numbered(_APPEND), (*_JOURNAL_TYPES[:-1], "text", "int4")
)
"""The direct append (journal row, run id, token), prepared on every pooled connection."""
_JOURNAL_FIELDS = (
    "run_id", "seq", "op", "kind", "name", "status", "input", "output", "error", "started_at",
    "finished_at", "attempts", "prev_hash", "hash", "branch", "token",
)  # fmt: skip
_APPEND_MANY = _pgwire.Prepared(
    "codara_append_many_v1",
    "INSERT INTO codara_journal (run_id, seq, op, kind, name, status, input, output, error, "
    "started_at, finished_at, attempts, prev_hash, hash, branch) "
    "SELECT v.run_id, v.seq, v.op, v.kind, v.name, v.status, v.input, v.output, v.error, "
    "v.started_at, v.finished_at, v.attempts, v.prev_hash, v.hash, v.branch "
    "FROM json_to_recordset($1) AS v("
    + ", ".join(f"{f} {t}" for f, t in zip(_JOURNAL_FIELDS, _JOURNAL_TYPES, strict=True))
    + ") WHERE EXISTS (SELECT 1 FROM codara_runs r WHERE r.id = v.run_id "
    "AND r.token = v.token FOR SHARE) RETURNING run_id, seq",
    ("json",),
)
"""Many fenced journal rows in one statement: each row only if its token owns its run.
The rows travel as one JSON document (orjson makes it; about 7x cheaper than sixteen text
arrays, and the server reads it in one pass)."""


_FINISH_MANY = _pgwire.Prepared(
    "codara_finish_many_v1",
    "UPDATE codara_runs r SET status = v.status, output = v.output, error = v.error, "
    "ready_at = NULL, owner = NULL, waiting_for = NULL, updated_at = v.now, "
    "finished_at = v.now FROM unnest($1, $2, $3, $4, $5, $6) "
    "AS v(id, token, status, output, error, now) WHERE r.id = v.id AND r.token = v.token",
    ("text[]", "int4[]", "text[]", "text[]", "text[]", "float8[]"),
)
"""``FINISH_RUN`` for many runs in one statement."""

_LOCK_HEADS = _pgwire.Prepared("codara_lock_heads_v1", _audit.LOCK_HEADS, ())
_LAST_HEAD = _pgwire.Prepared("codara_last_head_v1", _audit.LAST_HEAD, ())
_INSERT_HEADS = _pgwire.Prepared(
    "codara_insert_heads_v1",
    f"INSERT INTO codara_chain_heads ({_audit.HEAD_COLUMNS}) "
    "SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    ("int4[]", "text[]", "text[]", "int4[]", "text[]", "text[]", "float8[]", "text[]", "text[]"),
)
"""The heads rows of a group's finishes (``_audit.append_heads``, with the same lock and
the same chaining, as prepared statements)."""


def _journal_json(group: Sequence[Write]) -> bytes:
    """The rows of ``group`` as the JSON document ``_APPEND_MANY`` reads."""
    return orjson.dumps(
        [
            dict(zip(_JOURNAL_FIELDS, (*q.journal_params(w.record), w.token), strict=True))
            for w in group
        ]
    )


def _written(group: Sequence[Write], returned: Sequence[tuple[str | None, ...]]) -> set[int]:
    """The indexes in ``group`` of the rows ``_APPEND_MANY`` returned (run_id, seq)."""
    done = {(r[0], int(r[1] or 0)) for r in returned}
    return {i for i, w in enumerate(group) if (w.run_id, w.record.seq) in done}


def _finish_params(fs: Sequence[tuple[str, int, Finish]]) -> tuple[list[Any], ...]:
    return (
        [r for r, _, _ in fs],
        [t for _, t, _ in fs],
        [f.status for _, _, f in fs],
        [f.output for _, _, f in fs],
        [f.error for _, _, f in fs],
        [f.now for _, _, f in fs],
    )


async def _write_with_finishes(
    conn: psycopg.AsyncConnection[Any], group: Sequence[Write]
) -> set[int]:
    """A group with finishes in one transaction, in two pipelines (two round trips): BEGIN,
    the rows, the finished runs' status, the heads lock and the newest head; then the heads
    rows and COMMIT. The status UPDATE is fenced by the same token as the rows: a finish
    whose result row was fenced updates nothing, and one whose row was written holds that
    run row's share lock, so its token cannot change between the two statements. The
    newest head is read by a statement after the lock's, so under the lock."""
    fs = [(w.run_id, w.token, w.finish) for w in group if w.finish is not None]
    _, appended, updated, _, last = await _pgwire.pipeline(
        conn,
        [
            (b"BEGIN", ()),
            (_APPEND_MANY, (_journal_json(group),)),
            (_FINISH_MANY, _finish_params(fs)),
            (_LOCK_HEADS, ()),
            (_LAST_HEAD, ()),
        ],
    )
    done = _written(group, _pgwire.rows(appended))
    finished = [w for i, w in enumerate(group) if i in done and w.finish is not None]
    if (updated.command_tuples or 0) != len(finished):  # cannot happen: see above
        raise RuntimeError(f"finished {updated.command_tuples} of {len(finished)} runs")
    calls: list[_pgwire.Call] = []
    if finished:
        newest = _pgwire.rows(last)
        heads = _audit.chained_heads(
            newest[0] if newest else None,
            [
                ("run", w.run_id, w.record.seq + 1, w.record.hash, f.status, f.now)
                for w in finished
                if (f := w.finish) is not None
            ],
        )
        calls.append((_INSERT_HEADS, [list(c) for c in zip(*heads, strict=True)]))
    calls.append((b"COMMIT", ()))
    await _pgwire.pipeline(conn, calls)
    return done


async def _rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    """End a transaction a failed pipeline left open (else the pool discards the
    connection when it is handed back, which is as safe)."""
    status = conn.pgconn.transaction_status
    if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.execute("ROLLBACK")


_CLAIM = (
    f"UPDATE codara_runs r SET {q.CLAIM_SET} FROM ("
    "SELECT id FROM codara_runs WHERE ready_at <= ? AND {keys} "
    "ORDER BY ready_at LIMIT ? FOR UPDATE SKIP LOCKED) c WHERE r.id = c.id "
    "RETURNING r.id, r.workflow, r.version, r.input, r.token, r.signal_version, r.claim_streak, "
    "r.status"
)
_CLAIM_ONE = (
    f"UPDATE codara_runs SET {q.CLAIM_SET} "
    "WHERE id = ? AND ready_at IS NOT NULL AND ready_at <= ? AND {keys} "
    f"RETURNING {q.CLAIM_RETURNING}"
)


_CLAIM_MANY = _pgwire.Prepared(
    "codara_claim_v2",
    _pgwire.numbered(_CLAIM.format(keys="workflow_key = ANY(?)")),
    ("text", "float8", "float8", "float8", "text[]", "int4"),
)
"""The worker's claim of up to ``limit`` ready runs (owner, lease end, now, now, keys)."""
_SELECT_JOURNAL = _pgwire.Prepared(
    "codara_journal_v1", _pgwire.numbered(q.SELECT_JOURNAL), ("text",)
)


def _journal_record(r: Sequence[Any]) -> JournalRecord:
    """A journal row read as text (``_pgwire``) as the record psycopg would have made."""
    return JournalRecord(
        r[0], int(r[1]), int(r[2]), r[3], r[4], r[5], r[6], r[7], r[8],
        float(r[9]), float(r[10]), int(r[11]), r[12], r[13], r[14],
    )  # fmt: skip


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


class PostgresStore(SQLStore):
    dialect = "postgresql"
    APPEND = _APPEND
    CLAIM = _CLAIM
    CLAIM_ONE = _CLAIM_ONE
    LOCK_ROWS = " FOR UPDATE"
    WAKE = WAKE_SQL

    def __init__(self, url: DatabaseURL, pool: ConnectionPool) -> None:
        self.url_redacted = url.redacted()
        self._conninfo = url.pg_conninfo
        self._password = url.password
        self._pool = pool
        self._down = False
        # groups in flight at once, each on its own connection; one is left for the claims,
        # reads and heartbeats that run beside them
        self._init_group(max(1, pool.size - 1))

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
                "client_encoding": "UTF8",  # what _pgwire sends its text parameters in
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
        conn = await self._acquire()
        try:
            yield conn
        except (psycopg.Error, OSError) as exc:
            failed = self._failed(exc, conn)
            if failed is exc:
                raise
            raise failed from exc
        finally:
            self._pool.release(conn)

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        # While the server is known to be away, callers wait less for a connection: the API
        # answers 503 at once, a worker hands its run back sooner.
        timeout = min(self._pool.timeout, _DOWN_TIMEOUT) if self._down else self._pool.timeout
        try:
            conn = await self._pool.acquire(timeout)
        except PoolTimeout as exc:
            self._down = True
            raise self._unavailable(exc, timeout) from exc
        self._down = False
        return conn

    def _failed(
        self, exc: psycopg.Error | OSError, conn: psycopg.AsyncConnection[Any]
    ) -> Exception:
        """What a driver error on ``conn`` leaves the store as: StoreUnavailableError for a
        failure of the connection (or a transient one, e.g. a deadlock), else itself."""
        if connection_lost(exc, conn):
            self._down = True
            self._pool.check_soon()
            return self._unavailable(exc)
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return self._unavailable(exc)  # transient, e.g. a deadlock
        return exc

    @asynccontextmanager
    async def wakeups(self) -> AsyncIterator[asyncio.Event | None]:
        """One extra connection LISTENs for NOTIFY codara_wake while the worker runs; this
        process's own commits set the same event at once."""
        assert self._conninfo is not None
        async with WakeListener(self._conninfo) as event:
            with _local_wake.listening(self.wake_key, event):  # and this process's writes
                yield event

    @asynccontextmanager
    async def _write_tx(self) -> AsyncIterator[Tx]:
        async with self._conn() as conn, conn.transaction():
            tx = _PgTx(conn)
            yield tx
        self.woke(tx)  # committed: wake this process's workers if it made a run ready

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        async with self._write_tx() as tx:
            yield own_sql(tx)

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        async with self._conn() as conn:
            cur = await conn.execute(_pg(sql), params or None)
            return list(await cur.fetchall()) if cur.description else []

    async def _write(self, sql: str, params: WriteParams = ()) -> int:
        args = params if isinstance(params, tuple) else params(0)
        async with self._conn() as conn:
            cur = await conn.execute(_pg(sql), args or None)
            return cur.rowcount

    async def _write_rows(self, sql: str, params: WriteParams = ()) -> list[Any]:
        args = params if isinstance(params, tuple) else params(0)
        return await self._read(sql, args)

    def _members(self, column: str, values: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        return f"{column} = ANY(?)", (list(values),)

    def _journal_key_taken(self, exc: Exception) -> bool:
        return isinstance(exc, pg_errors.UniqueViolation) and _journal_key(exc)

    def _store_failed(self, tx: Tx, exc: Exception) -> bool:
        assert isinstance(tx, _PgTx)
        return connection_lost(exc, tx._conn)

    async def journal(self, run_id: str) -> list[JournalRecord]:
        async with self._conn() as conn:
            rows = await _SELECT_JOURNAL.fetch(conn, (run_id,))
        return [_journal_record(r) for r in rows]

    async def claim(
        self,
        owner: str,
        workflow_keys: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        run_id: str | None = None,
    ) -> list[Claim]:
        if run_id is not None or not workflow_keys:
            return await super().claim(owner, workflow_keys, limit, now, lease_until, run_id)
        async with self._conn() as conn:
            rows = await _CLAIM_MANY.fetch(
                conn, (owner, lease_until, now, now, list(workflow_keys), limit)
            )
        return [
            Claim(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6]),  # type: ignore[arg-type]
                  cancelling=r[7] == "cancelling")
            for r in rows
        ]  # fmt: skip

    # -- the hot path ----------------------------------------------------------------------
    async def append(self, run_id: str, token: int, record: JournalRecord) -> None:
        """One round trip: the fenced INSERT ... SELECT ... WHERE EXISTS, autocommitted."""
        if self._group.direct(run_id):
            await self._append_now(run_id, token, record)
        else:  # another write is in flight: share the next commit
            await self._group.submit(Write(run_id, token, record))

    async def _append_now(self, run_id: str, token: int, record: JournalRecord) -> None:
        # ``_conn`` inlined: this is the hot path, one call per step
        group = self._group
        group.inflight += 1
        try:
            conn = await self._acquire()
            try:
                n = await _APPEND_PREPARED.execute(conn, (*q.journal_params(record), run_id, token))
            except (psycopg.Error, OSError) as exc:
                if isinstance(exc, pg_errors.UniqueViolation) and _journal_key(exc):
                    raise FencedError(run_id) from exc  # another owner wrote this seq already
                failed = self._failed(exc, conn)
                if failed is exc:
                    raise
                raise failed from exc
            finally:
                self._pool.release(conn)
        finally:
            group.inflight -= 1
        if n != 1:
            raise FencedError(run_id)

    async def _finish_now(
        self, run_id: str, token: int, finish: Finish, record: JournalRecord
    ) -> None:
        """A lone finish is a group of one: the same prepared statements in one transaction
        (the result row, fenced; the run's status; its chain head)."""
        self._group.inflight += 1
        try:
            written = await self._write_group([Write(run_id, token, record, finish)])
        finally:
            self._group.inflight -= 1
        if not written[0]:
            raise FencedError(run_id)

    async def _write_group(self, group: Sequence[Write]) -> list[bool]:
        """Rows alone: one autocommitted multi-row statement, one round trip. With finishes:
        one transaction in two round trips (``_write_with_finishes``)."""
        async with self._conn() as conn:
            if not any(w.finish for w in group):
                returned = await _APPEND_MANY.fetch(conn, (_journal_json(group),))
                done = _written(group, returned)
            else:
                try:
                    done = await _write_with_finishes(conn, group)
                except Exception:
                    await _rollback(conn)
                    raise
        return [i in done for i in range(len(group))]

    async def execute_raw(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._read(sql, tuple(params))


def _reason(exc: BaseException, url: DatabaseURL | None, password: str | None = None) -> str:
    """The first line of a driver error, with the password (if any) blanked out."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    secret = password if password is not None else (url.password if url else None)
    if secret:
        reason = reason.replace(str(secret), "***")
    return reason
