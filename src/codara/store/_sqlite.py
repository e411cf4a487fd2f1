"""SQLite backend: the standard ``sqlite3`` module called on the event loop.

A SQLite write takes microseconds, less than a hop to a thread would cost, so statements run
directly on the loop. The connection is in autocommit mode: a single-statement write is its
own transaction, and multi-statement writes use ``BEGIN IMMEDIATE`` so that concurrent
workers serialise on the database lock instead of failing on upgrade. WAL lets readers run
beside the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from codara.errors import DatabaseUnreachableError
from codara.store import _base as q
from codara.store._base import FencedError, RowBuilder, Store, Tx
from codara.store._types import RUN_COLUMNS, Claim, JournalRecord, RunRecord
from codara.store._url import DatabaseURL

__all__ = ["SQLiteStore"]

_APPEND = (
    "INSERT INTO codara_journal (run_id, seq, op, kind, name, status, input, output, error, "
    "started_at, finished_at, attempts, prev_hash, hash, branch) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
    "WHERE EXISTS (SELECT 1 FROM codara_runs WHERE id = ? AND token = ?)"
)
_CLAIM = (
    "UPDATE codara_runs SET status = 'running', owner = ?, token = token + 1, "
    "attempts = attempts + 1, ready_at = ?, updated_at = ? WHERE id IN ("
    "SELECT id FROM codara_runs WHERE ready_at <= ? AND workflow_key IN ({keys}) "
    "ORDER BY ready_at LIMIT ?) "
    "RETURNING id, workflow, version, input, token, signal_version"
)
_CLAIM_ONE = (
    "UPDATE codara_runs SET status = 'running', owner = ?, token = token + 1, "
    "attempts = attempts + 1, ready_at = ?, updated_at = ? "
    "WHERE id = ? AND ready_at IS NOT NULL AND ready_at <= ? AND workflow_key IN ({keys}) "
    "RETURNING id, workflow, version, input, token, signal_version"
)


class _SQLiteTx(Tx):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # The base class binds the parameters (``:name`` compiled to ``?``); the SQL goes as is.
    async def _execute(self, sql: str, params: Any) -> int:
        return self._conn.execute(sql, params or ()).rowcount

    async def _fetchall(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, params or ()).fetchall())


class SQLiteStore(Store):
    dialect = "sqlite"

    def __init__(self, url: DatabaseURL, *, durability: str = "fsync") -> None:
        assert url.sqlite_path is not None
        self.url_redacted = url.redacted()
        try:
            conn = sqlite3.connect(
                url.sqlite_path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if durability == "fsync" else "NORMAL"
            conn.execute(f"PRAGMA synchronous={sync}")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise DatabaseUnreachableError(
                f"cannot open the SQLite database {url.sqlite_path}: {exc}",
                hint="check the path and its permissions",
            ) from exc
        self._conn = conn
        self._lock = asyncio.Lock()  # held while a multi-statement transaction is open
        self._claim_sql: dict[int, str] = {}

    async def close(self) -> None:
        self._conn.close()

    # A transaction that spans an await (a transactional step's body) must not interleave with
    # other runs' statements on the shared connection: they wait for the lock. Single
    # statements only take the lock when it is held, which keeps the hot path lock-free.
    async def _quiet(self) -> None:
        if self._lock.locked():
            async with self._lock:
                pass

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        async with self._lock:
            self._begin()
            try:
                yield _SQLiteTx(self._conn)
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    # -- runs ------------------------------------------------------------------------------
    async def create_runs(self, rows: Sequence[q.NewRun], now: float) -> list[str]:
        async with self._lock:
            ids: list[str] = []
            self._begin()
            try:
                for run_id, workflow, version, input_json, key, genesis, started_by in rows:
                    if key is not None:
                        found = self._conn.execute(q.SELECT_RUN_BY_KEY, (key,)).fetchone()
                        if found:
                            ids.append(found[0])
                            continue
                    self._conn.execute(
                        q.INSERT_RUN,
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
                    ids.append(run_id)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return ids

    async def get_run(self, run_id: str) -> RunRecord | None:
        await self._quiet()
        row = self._conn.execute(q.SELECT_RUN, (run_id,)).fetchone()
        return q.run_from_row(row) if row else None

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunRecord]:
        await self._quiet()
        where, params = q.filters(status, workflow, before)
        sql = f"SELECT {RUN_COLUMNS} FROM codara_runs{where} ORDER BY created_at DESC LIMIT ?"
        return [q.run_from_row(r) for r in self._conn.execute(sql, (*params, limit))]

    async def count_runs(self, *, workflow: str | None = None) -> dict[str, int]:
        await self._quiet()
        where, params = q.filters(None, workflow, None)
        sql = f"SELECT status, COUNT(*) FROM codara_runs{where} GROUP BY status"
        return {s: n for s, n in self._conn.execute(sql, params)}

    async def journal(self, run_id: str) -> list[JournalRecord]:
        await self._quiet()
        return [q.journal_from_row(r) for r in self._conn.execute(q.SELECT_JOURNAL, (run_id,))]

    async def run_ids(self, *, after: str | None, limit: int) -> list[str]:
        await self._quiet()
        rows = self._conn.execute(
            "SELECT id FROM codara_runs WHERE id > ? ORDER BY id LIMIT ?", (after or "", limit)
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
        await self._quiet()
        marks = ", ".join("?" * len(workflow_keys))
        if run_id is not None:
            sql = _CLAIM_ONE.format(keys=marks)
            params: tuple[Any, ...] = (owner, lease_until, now, run_id, now, *workflow_keys)
        else:
            sql = _CLAIM.format(keys=marks)
            params = (owner, lease_until, now, now, *workflow_keys, limit)
        return [q.claim_from_row(r) for r in self._conn.execute(sql, params).fetchall()]

    async def append(self, run_id: str, token: int, record: JournalRecord) -> None:
        if self._lock.locked():
            await self._quiet()
        try:
            cur = self._conn.execute(_APPEND, (*q.journal_params(record), run_id, token))
        except sqlite3.IntegrityError as exc:  # another owner wrote this seq already
            raise FencedError(run_id) from exc
        if cur.rowcount != 1:
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
        async with self._lock:
            self._begin()
            try:
                cur = self._conn.execute(
                    q.FINISH_RUN, (status, output, error, now, now, run_id, token)
                )
                if cur.rowcount != 1:
                    raise FencedError(run_id)
                self._conn.execute(_APPEND, (*q.journal_params(record), run_id, token))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

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
        await self._quiet()
        cur = self._conn.execute(
            q.SUSPEND_RUN, (status, ready_at, waiting_for, now, run_id, token, signal_version)
        )
        if cur.rowcount == 1:
            return None
        row = self._conn.execute(
            "SELECT token, signal_version FROM codara_runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None or row[0] != token:
            raise FencedError(run_id)
        return int(row[1])

    async def release(
        self, run_id: str, token: int, ready_at: float, note: str | None, now: float
    ) -> None:
        await self._quiet()
        self._conn.execute(q.RELEASE_RUN, (ready_at, note, now, run_id, token))

    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], lease_until: float, now: float
    ) -> set[str]:
        if not run_ids:
            return set()
        await self._quiet()
        ids = ", ".join("?" * len(run_ids))
        self._conn.execute(q.HEARTBEAT.format(ids=ids), (lease_until, now, owner, *run_ids))
        rows = self._conn.execute(q.OWNED.format(ids=ids), (owner, *run_ids))
        return {r[0] for r in rows}

    async def consume_signal(
        self, run_id: str, token: int, name: str, seq: int, build: RowBuilder
    ) -> JournalRecord | None:
        async with self._lock:
            self._begin()
            try:
                found = self._conn.execute(q.FIND_SIGNAL, (run_id, name)).fetchone()
                if found is None:
                    self._conn.execute("ROLLBACK")
                    return None
                self._conn.execute(q.CONSUME_SIGNAL, (seq, found[0]))
                record = build(found[1])
                cur = self._conn.execute(_APPEND, (*q.journal_params(record), run_id, token))
                if cur.rowcount != 1:
                    raise FencedError(run_id)
                self._conn.execute("COMMIT")
                return record
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    async def transaction(
        self,
        run_id: str,
        token: int,
        body: Callable[[Tx], Awaitable[Any]],
        build: Callable[[Any], JournalRecord],
    ) -> tuple[Any, JournalRecord]:
        async with self._lock:
            self._begin()
            try:
                result = await body(_SQLiteTx(self._conn))
                record = build(result)
                cur = self._conn.execute(_APPEND, (*q.journal_params(record), run_id, token))
                if cur.rowcount != 1:
                    raise FencedError(run_id)
                self._conn.execute("COMMIT")
                return result, record
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    # -- from outside ----------------------------------------------------------------------
    async def send_signal(self, run_id: str, name: str, payload: str | None, now: float) -> bool:
        async with self.tx() as tx:
            return await q.signal_run(tx, run_id, name, payload, now)

    async def cancel(self, run_id: str, now: float) -> bool:
        await self._quiet()
        return self._conn.execute(q.CANCEL_RUN, (now, now, run_id)).rowcount == 1

    async def execute_raw(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        await self._quiet()
        return list(self._conn.execute(sql, tuple(params)).fetchall())
