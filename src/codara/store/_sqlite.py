"""SQLite backend: the standard ``sqlite3`` module called on the event loop.

The store's logic is :class:`~codara.store._sql.SQLStore`'s; this module is the driver's
part of it: the connections, the lock handling, the error mapping, the hot-path ``append``
and the lazy-write ``store.tx()``.

A SQLite write takes microseconds, less than a hop to a thread would cost, so statements run
directly on the loop. The write connection is in autocommit mode: a single-statement write is
its own transaction, and multi-statement writes use ``BEGIN IMMEDIATE`` so that concurrent
workers serialise on the database lock instead of failing on upgrade. WAL lets readers run
beside the writer: single-statement reads use a connection of their own, so they never wait
for this process's open transactions nor for another process's write lock.

Waiting for the write lock never blocks the loop. The busy timeout is a few milliseconds
(enough for another process's commit to finish); a statement that still finds the database
locked waits with ``asyncio.sleep`` and tries again, with backoff, until ``lock_budget``
seconds have passed, then raises ``StoreUnavailableError``. While one statement waits, the
others of this process queue behind it on ``_lock`` (the lock that also serialises
multi-statement transactions on the shared connection), so only one of them probes.

Wake-ups: a worker's ``wakeups()`` event is set by this process's commits that make a run
ready (:mod:`codara.store._local_wake`) and, for other processes, by a watch of
``PRAGMA data_version`` (:meth:`SQLiteStore._watch`), SQLite's own change counter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from codara.errors import DatabaseUnreachableError, StoreUnavailableError
from codara.store import _base as q
from codara.store import _local_wake
from codara.store._base import FencedError, Tx, own_sql
from codara.store._group import Write
from codara.store._sql import SQLStore, WriteParams
from codara.store._types import JournalRecord
from codara.store._url import DatabaseURL

__all__ = ["SQLiteStore"]

log = logging.getLogger("codara.store")

T = TypeVar("T")
Params = tuple[Any, ...]

_BUSY_TIMEOUT_MS = 5  # what a statement may block the loop waiting inside SQLite
_WATCH_FIRST, _WATCH_MAX = 0.002, 0.025  # wake-ups: data_version looks, doubling when quiet
_BACKOFF_FIRST, _BACKOFF_MAX = 0.001, 0.025  # then it waits on the loop, doubling
_JOURNAL_KEY = "codara_journal.run_id, codara_journal.seq"  # another execution wrote this seq
_TRANSIENT = frozenset(  # the disk or the OS failed us: worth retrying later, not a bug
    {
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_PROTOCOL,
    }
)

_APPEND = (
    "INSERT INTO codara_journal (run_id, seq, op, kind, name, status, input, output, error, "
    "started_at, finished_at, attempts, prev_hash, hash, branch) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
    "WHERE EXISTS (SELECT 1 FROM codara_runs WHERE id = ? AND token = ?)"
)
_CLAIM = (
    f"UPDATE codara_runs SET {q.CLAIM_SET} WHERE id IN ("
    "SELECT id FROM codara_runs WHERE ready_at <= ? AND {keys} "
    f"ORDER BY ready_at LIMIT ?) RETURNING {q.CLAIM_RETURNING}"
)
_CLAIM_ONE = (
    f"UPDATE codara_runs SET {q.CLAIM_SET} "
    "WHERE id = ? AND ready_at IS NOT NULL AND ready_at <= ? AND {keys} "
    f"RETURNING {q.CLAIM_RETURNING}"
)


def _busy(exc: sqlite3.Error) -> bool:
    """The database is locked by another connection: wait and try again."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _is_read(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


class _SQLiteTx(Tx):
    """A ``store.tx()`` transaction that takes the write lock only when it first writes.

    Reads before the first write run on a pooled connection of their own, in a deferred
    transaction (one consistent snapshot that no writer blocks), so a read-only transaction
    never waits for the write lock. At the first write the transaction takes this process's
    ``_lock``, waits (asynchronously) for ``BEGIN IMMEDIATE`` on the write connection and runs
    its earlier reads again there: if any answer changed meanwhile, what the caller decided on
    them may be stale, so it rolls back and raises ``StoreUnavailableError`` (retry).
    """

    dialect = "sqlite"

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._reader: sqlite3.Connection | None = None
        self._reads: list[tuple[str, Params, list[tuple[Any, ...]]]] = []
        self._writing = False
        self._locked = False

    # The base class binds the parameters (``:name`` compiled to ``?``); the SQL goes as is.
    async def _execute(self, sql: str, params: Any) -> int:
        args = params or ()
        if not self._writing and _is_read(sql):
            return len(await self._read(sql, args))
        await self._start_writing()
        return self._store._statement(sql, args).rowcount

    async def _fetchall(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        args = params or ()
        if not self._writing and _is_read(sql):
            return await self._read(sql, args)
        await self._start_writing()
        return list(self._store._statement(sql, args).fetchall())

    async def _read(self, sql: str, args: Params) -> list[tuple[Any, ...]]:
        store = self._store
        if self._reader is None:
            self._reader = store._take_reader()
            await store._attempt(self._reader, lambda _: self._reader_begin())
        rows = await store._attempt(self._reader, lambda _: self._reader_fetch(sql, args))
        self._reads.append((sql, args, rows))
        return rows

    def _reader_begin(self) -> None:
        assert self._reader is not None
        self._reader.execute("BEGIN")

    def _reader_fetch(self, sql: str, args: Params) -> list[tuple[Any, ...]]:
        assert self._reader is not None
        return list(self._reader.execute(sql, args).fetchall())

    async def _start_writing(self) -> None:
        if self._writing:
            return
        store = self._store
        await store._lock.acquire()
        self._locked = True
        await store._begin()
        self._writing = True
        self._end_read()
        for sql, args, rows in self._reads:
            if list(store._statement(sql, args).fetchall()) != rows:
                raise StoreUnavailableError(
                    "the rows this transaction read changed before it could write "
                    f"(another writer committed first; database {store.url_redacted})",
                    hint="nothing of it was written; try the operation again",
                )

    async def for_update(self) -> None:
        await self._start_writing()

    def _end_read(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            self._store._give_back_reader(reader)

    async def commit(self) -> None:
        if self._writing:
            await self._store._commit()

    def close(self) -> None:
        """End whatever is still open (a rollback after a failure) and free the locks."""
        self._end_read()
        if self._writing:
            self._store._rollback()
            self._writing = False
        if self._locked:
            self._locked = False
            self._store._lock.release()


class _BodyTx(Tx):
    """The transaction a transactional step's body writes in: already ``BEGIN IMMEDIATE``."""

    dialect = "sqlite"

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    async def _execute(self, sql: str, params: Any) -> int:
        return self._store._statement(sql, params or ()).rowcount

    async def _fetchall(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        return list(self._store._statement(sql, params or ()).fetchall())


class SQLiteStore(SQLStore):
    dialect = "sqlite"
    APPEND = _APPEND
    CLAIM = _CLAIM
    CLAIM_ONE = _CLAIM_ONE
    GROUP_WINDOW = 0.002

    def __init__(
        self, url: DatabaseURL, *, durability: str = "fsync", lock_budget: float = 30.0
    ) -> None:
        assert url.sqlite_path is not None
        self.url_redacted = url.redacted()
        self._path = url.sqlite_path
        self._sync = "FULL" if durability == "fsync" else "NORMAL"
        self._budget = lock_budget  # how long a statement waits for the write lock in all
        self._closed = False
        try:
            conn = self._connect()
            conn.execute("PRAGMA journal_mode=WAL")
            reads = self._connect()
        except sqlite3.Error as exc:
            raise DatabaseUnreachableError(
                f"cannot open the SQLite database {url.sqlite_path}: {exc}",
                hint="check the path and its permissions",
            ) from exc
        self._conn = conn  # every write, and each transaction's statements once it writes
        self._reads = reads  # single-statement reads (autocommit: the latest commit)
        self._readers: list[sqlite3.Connection] = []  # idle connections for tx() snapshots
        self._lock = asyncio.Lock()  # held while a transaction or a waiting write uses _conn
        self._init_group()

    @property
    def wake_key(self) -> str:
        return f"sqlite:{os.path.realpath(self._path)}"

    @asynccontextmanager
    async def wakeups(self) -> AsyncIterator[asyncio.Event | None]:
        """Set by this process's commits at once, and by other processes' commits within
        ``_WATCH_MAX`` seconds (:meth:`_watch`)."""
        event = asyncio.Event()
        watcher = asyncio.create_task(self._watch(event), name=f"watch {self.url_redacted}")
        try:
            with _local_wake.listening(self.wake_key, event):
                yield event
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, event: asyncio.Event) -> None:
        """Set ``event`` when another connection has committed to the database.

        SQLite has no notification between processes, but ``PRAGMA data_version`` on a
        connection of its own changes whenever another connection commits: it reads the
        WAL index in shared memory (no disk, no lock), microseconds a look. Looks come every
        ``_WATCH_FIRST`` seconds after a change, doubling while nothing changes up to
        ``_WATCH_MAX``. Commits that make nothing ready (this process's own steps, say) set
        the event too: it only makes an idle worker claim sooner. If the watch fails, the
        worker still polls."""
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            seen = conn.execute("PRAGMA data_version").fetchone()[0]
            delay = _WATCH_FIRST
            while not self._closed:
                await asyncio.sleep(delay)
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.OperationalError as exc:
                    if not _busy(exc):
                        raise
                    continue
                if version != seen:
                    seen, delay = version, _WATCH_FIRST
                    event.set()
                else:
                    delay = min(_WATCH_MAX, delay * 2)
        except sqlite3.Error as exc:
            log.warning(
                "watching %s for other processes' commits failed (%s); workers poll instead",
                self.url_redacted,
                exc,
            )
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        return conn

    async def close(self) -> None:
        self._closed = True
        for conn in (self._conn, self._reads, *self._readers):
            conn.close()
        self._readers.clear()

    # -- errors ----------------------------------------------------------------------------
    def _raise_transient(self, exc: sqlite3.Error) -> None:
        """Raise StoreUnavailableError if ``exc`` is a failure of the store, not of the SQL
        (which then propagates unchanged: a constraint, a syntax error, a missing table)."""
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            raise StoreUnavailableError(
                f"the SQLite store {self.url_redacted} is closed",
                hint="the app or worker was shut down; open it again to go on",
            ) from exc
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _TRANSIENT:
            raise StoreUnavailableError(
                f"the SQLite database {self.url_redacted} failed: {exc}",
                hint="check the disk that holds it (free space, permissions, health); the "
                "engine hands the run back and tries again",
            ) from exc

    def _locked_too_long(self, waited: float) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"the SQLite database {self.url_redacted} stayed locked by another connection "
            f"for {waited:.1f} s (the budget is {self._budget:g} s)",
            hint="another process holds a long write transaction on the file; the engine "
            "hands the run back and tries again",
        )

    # -- waiting for the write lock without blocking the loop ------------------------------
    async def _attempt(
        self, conn: sqlite3.Connection, attempt: Callable[[float], T], start: float | None = None
    ) -> T:
        """``attempt(waited)`` now; while the database is locked, again with backoff, until
        the budget is spent. ``waited`` counts the seconds since ``start`` (the loop's clock;
        default: now), the time spent queueing on ``_lock`` included."""
        loop = asyncio.get_running_loop()
        if start is None:
            start = loop.time()
        try:
            return attempt(loop.time() - start)
        except sqlite3.Error as exc:
            self._raise_unless_busy(exc)
        return await self._wait(conn, attempt, start)

    async def _wait(
        self, conn: sqlite3.Connection, attempt: Callable[[float], T], start: float
    ) -> T:
        loop = asyncio.get_running_loop()
        delay = _BACKOFF_FIRST
        conn.execute("PRAGMA busy_timeout=0")  # from here on every wait is on the loop
        try:
            while True:
                await asyncio.sleep(delay)
                waited = loop.time() - start
                try:
                    return attempt(waited)
                except sqlite3.Error as exc:
                    self._raise_unless_busy(exc)
                    if waited >= self._budget:
                        raise self._locked_too_long(waited) from exc
                delay = min(delay * 2, _BACKOFF_MAX)
        finally:
            if not self._closed:
                conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")

    def _raise_unless_busy(self, exc: sqlite3.Error) -> None:
        if not _busy(exc):
            self._raise_transient(exc)
            raise exc

    def _write_now(self, sql: str, params: WriteParams) -> sqlite3.Cursor | None:
        """The hot path: the write at once, no await, no lock; None if it must wait."""
        if self._lock.locked():
            return None
        try:
            return self._conn.execute(sql, params if isinstance(params, tuple) else params(0))
        except sqlite3.Error as exc:
            self._raise_unless_busy(exc)
            return None

    async def _write(self, sql: str, params: WriteParams = ()) -> int:
        """One statement on the write connection, its own transaction. ``params`` may be a
        function of the seconds spent waiting for the lock (a lease counts from the write)."""
        cur = self._write_now(sql, params)
        if cur is None:
            cur = await self._write_waiting(sql, params)
        return cur.rowcount

    async def _write_rows(self, sql: str, params: WriteParams = ()) -> list[Any]:
        cur = self._write_now(sql, params)
        if cur is None:
            cur = await self._write_waiting(sql, params)
        return cur.fetchall()

    async def _write_waiting(self, sql: str, params: WriteParams) -> sqlite3.Cursor:
        start = asyncio.get_running_loop().time()

        def attempt(waited: float) -> sqlite3.Cursor:
            return self._conn.execute(sql, params if isinstance(params, tuple) else params(waited))

        async with self._lock:  # one statement probes the lock; the others queue behind it
            return await self._attempt(self._conn, attempt, start)

    def _statement(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        """A statement inside this process's open write transaction (it holds the lock)."""
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            self._raise_transient(exc)
            raise

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """A single-statement read of the latest commit; never waits for a writer."""
        return await self._attempt(
            self._reads, lambda _: self._reads.execute(sql, params).fetchall()
        )

    # -- multi-statement transactions on the write connection (the caller holds _lock) ----
    async def _begin(self) -> None:
        await self._attempt(self._conn, lambda _: self._conn.execute("BEGIN IMMEDIATE"))

    async def _commit(self) -> None:
        """COMMIT; if it meets a lock it is retried (the transaction stays open meanwhile),
        and if the lock outlasts the budget the transaction is rolled back and the error
        raised: it never vanishes silently."""
        await self._attempt(self._conn, lambda _: self._conn.execute("COMMIT"))

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:  # closed: nothing was committed; the first error tells
                pass

    def _take_reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailableError(
                f"the SQLite store {self.url_redacted} is closed",
                hint="the app or worker was shut down; open it again to go on",
            )
        return self._readers.pop() if self._readers else self._connect()

    def _give_back_reader(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn.close()
            return
        if self._closed:
            conn.close()
        else:
            self._readers.append(conn)

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Tx]:
        tx = _SQLiteTx(self)
        try:
            yield own_sql(tx)
            await tx.commit()
        finally:
            tx.close()
        self.woke(tx)  # committed: wake this process's workers if it made a run ready

    @asynccontextmanager
    async def _write_tx(self) -> AsyncIterator[Tx]:
        """BEGIN IMMEDIATE ... COMMIT on the write connection, under _lock."""
        async with self._lock:
            await self._begin()
            try:
                tx = _BodyTx(self)
                yield tx
                await self._commit()
            finally:
                self._rollback()  # only if still open: the body or the COMMIT failed
        self.woke(tx)  # committed: wake this process's workers if it made a run ready

    def _members(self, column: str, values: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        return f"{column} IN ({', '.join('?' * len(values))})", tuple(values)

    def _journal_key_taken(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and _JOURNAL_KEY in str(exc)

    # -- the hot path ----------------------------------------------------------------------
    async def append(self, run_id: str, token: int, record: JournalRecord) -> None:
        if not self._group.direct(run_id):  # other runs write now: share their commit
            await self._group.submit(Write(run_id, token, record))
            return
        args = (*q.journal_params(record), run_id, token)
        try:  # _write's hot path inlined: one coroutine less per step
            if self._lock.locked():
                cur = await self._append_waiting(args)
            else:
                try:
                    cur = self._conn.execute(_APPEND, args)
                except sqlite3.Error as exc:
                    self._raise_unless_busy(exc)
                    cur = await self._append_waiting(args)
        except sqlite3.IntegrityError as exc:
            if self._journal_key_taken(exc):
                raise FencedError(run_id) from exc
            raise
        if cur.rowcount != 1:
            raise FencedError(run_id)

    async def _append_waiting(self, args: Params) -> sqlite3.Cursor:
        self._group.inflight += 1  # others queue for the next group meanwhile
        try:
            return await self._write_waiting(_APPEND, args)
        finally:
            self._group.inflight -= 1

    async def _append_now(self, run_id: str, token: int, record: JournalRecord) -> None:
        args = (*q.journal_params(record), run_id, token)
        try:
            cur = await self._write_waiting(_APPEND, args)
        except sqlite3.IntegrityError as exc:
            if self._journal_key_taken(exc):
                raise FencedError(run_id) from exc
            raise
        if cur.rowcount != 1:
            raise FencedError(run_id)

    async def execute_raw(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if _is_read(sql):
            return list(await self._read(sql, tuple(params)))
        return list(await self._write_rows(sql, tuple(params)))
