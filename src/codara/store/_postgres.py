"""PostgreSQL backend: psycopg 3 with native async, prepared statements and a small pool.

Claims use ``FOR UPDATE SKIP LOCKED`` so that many workers on many machines take disjoint
runs without waiting for each other. A journal append locks the run row ``FOR SHARE``: a
claim by another worker (which updates that row) is then ordered strictly before or after
the append, so a worker that lost its lease can never add a row after the new owner has read
the journal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from codara.errors import DatabaseUnreachableError
from codara.store import _audit
from codara.store import _base as q
from codara.store._base import FencedError, RowBuilder, Store, Tx
from codara.store._notify_pg import WAKE_SQL, WakeListener
from codara.store._types import RUN_COLUMNS, Claim, JournalRecord, RunRecord
from codara.store._url import DatabaseURL

__all__ = ["PostgresStore"]


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


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
_HEARTBEAT = _pg(q.HEARTBEAT.format(ids="SELECT unnest(?::text[])"))
_OWNED = _pg(q.OWNED.format(ids="SELECT unnest(?::text[])"))


class _PgTx(Tx):
    dialect = "postgresql"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self._conn.execute(_pg(sql), tuple(params))
        return cur.rowcount

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = await self._conn.execute(_pg(sql), tuple(params))
        return list(await cur.fetchall())


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: DatabaseURL, conns: list[psycopg.AsyncConnection[Any]]) -> None:
        self.url_redacted = url.redacted()
        self._conninfo = url.pg_conninfo
        self._all = conns
        self._free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        for c in conns:
            self._free.put_nowait(c)

    @classmethod
    async def connect(cls, url: DatabaseURL, *, pool_size: int = 4) -> PostgresStore:
        assert url.pg_conninfo is not None
        conns: list[psycopg.AsyncConnection[Any]] = []
        try:
            for _ in range(pool_size):
                conns.append(
                    await psycopg.AsyncConnection.connect(
                        url.pg_conninfo, autocommit=True, prepare_threshold=0, connect_timeout=5
                    )
                )
        except psycopg.OperationalError as exc:
            for c in conns:
                await c.close()
            reason = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
            raise DatabaseUnreachableError(
                f"cannot connect to the database {url.redacted()}: {reason}",
                hint="is PostgreSQL running and the URL right? check host, port, user and "
                "database name",
            ) from exc
        return cls(url, conns)

    async def close(self) -> None:
        for c in self._all:
            await c.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = await self._free.get()
        try:
            yield conn
        finally:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.rollback()
            self._free.put_nowait(conn)

    @asynccontextmanager
    async def wakeups(self) -> AsyncIterator[asyncio.Event | None]:
        """One extra connection LISTENs for NOTIFY codara_wake while the worker runs."""
        assert self._conninfo is not None
        async with WakeListener(self._conninfo) as event:
            yield event

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        async with self._conn() as conn, conn.transaction():
            yield _PgTx(conn)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._conn() as conn:
            cur = await conn.execute(sql, tuple(params))
            return list(await cur.fetchall()) if cur.description else []

    async def _rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._conn() as conn:
            cur = await conn.execute(sql, tuple(params))
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
        try:
            n = await self._rowcount(_APPEND, (*q.journal_params(record), run_id, token))
        except pg_errors.UniqueViolation as exc:
            raise FencedError(run_id) from exc
        if n != 1:
            raise FencedError(run_id)

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
            await conn.execute(_APPEND, (*q.journal_params(record), run_id, token))
            await _audit.record_finish(_PgTx(conn), record, status, now)

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
            cur = await conn.execute(_APPEND, (*q.journal_params(record), run_id, token))
            if cur.rowcount != 1:
                raise FencedError(run_id)
            return record

    async def transaction(
        self,
        run_id: str,
        token: int,
        body: Callable[[Tx], Awaitable[Any]],
        build: Callable[[Any], JournalRecord],
    ) -> tuple[Any, JournalRecord]:
        try:
            async with self._conn() as conn, conn.transaction():
                result = await body(_PgTx(conn))
                record = build(result)
                cur = await conn.execute(_APPEND, (*q.journal_params(record), run_id, token))
                if cur.rowcount != 1:
                    raise FencedError(run_id)
                return result, record
        except pg_errors.UniqueViolation as exc:
            raise FencedError(run_id) from exc

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
