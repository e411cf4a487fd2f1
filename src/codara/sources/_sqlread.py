"""How the SQL connector reads: one ``batches`` call's connection, transaction and
streamed result (:class:`Read`), driven from the event loop through worker threads, and the
resume cursor with its digest of the rows delivered. The policy (which database refuses
writes how, what an error means) stays in :mod:`._sql`; see its docstring."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import math
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult

from codara.errors import InputError, SourceError
from codara.sources._base import JSON, Plan, Rejected, json_value

if TYPE_CHECKING:
    from codara.sources._sql import SqlSource

__all__ = ["Read", "final", "hash_rows", "in_thread", "parse_cursor"]


class Read:
    """One ``batches`` call's connection, transaction and result, used from worker threads
    one call at a time (``in_thread`` waits for a call before the next starts)."""

    def __init__(self, source: SqlSource, plan: Plan) -> None:
        self.source, self.plan = source, plan
        self.conn: Connection | None = None
        self.result: CursorResult[Any] | None = None
        self.keys: list[str] = []
        self.version: str | None = None
        self.delivered = 0
        self._peeked: list[Any] = []
        self._exhausted = False
        self._deadline = math.inf
        self._cancelled = False
        self._timed_out = False
        ts = source.config.timestamp_column
        self._ts_column = ts.rpartition(".")[2].lower() if ts else None
        self._ts_index: int | None = None

    # Worker-thread side.
    def _go_on(self) -> None:
        """Raise if the reading task was cancelled before this call got to the database."""
        if self._cancelled:
            raise asyncio.CancelledError

    def start(self) -> None:
        src = self.source
        self._go_on()
        try:
            self.conn = src.engine.connect()
        except sa.exc.DBAPIError as exc:
            raise src._connect_error(exc) from None
        try:
            if src.dialect == "sqlite":
                raw = self.conn.connection.dbapi_connection
                assert isinstance(raw, sqlite3.Connection)
                raw.set_progress_handler(self._sqlite_progress, 1000)
            self._deadline = time.monotonic() + src.config.statement_timeout
            src._begin(self.conn)
            if src.dialect == "postgresql":
                self.version = "pg-lsn:" + str(
                    self.conn.exec_driver_sql(
                        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
                        "ELSE pg_current_wal_lsn() END"
                    ).scalar_one()
                )
            self._go_on()
            stream = self.conn.execution_options(stream_results=True)
            self.result = stream.execute(sa.text(self.plan.target), dict(self.plan.params))
            if not self.result.returns_rows:
                raise final(f"source {src.name!r}: the query returned no rows (not a SELECT?)")
            self.keys = list(self.result.keys())
            twice = sorted({k for k in self.keys if self.keys.count(k) > 1})
            if twice:  # a record is a dict: one of the two values would be lost
                raise InputError(
                    f"source {src.name!r}: the query returns more than one column named "
                    f"{', '.join(twice)}",
                    hint="give each selected column its own name (AS ...)",
                )
        except sa.exc.DBAPIError as exc:
            raise src._read_error(exc, self.plan, self._timed_out) from None
        self._locate_timestamp()

    def _locate_timestamp(self) -> None:
        cfg = self.source.config
        if self._ts_column is None:
            return
        lowered = [k.lower() for k in self.keys]
        if self._ts_column in lowered:
            self._ts_index = lowered.index(self._ts_column)
        elif cfg.max_age is not None:
            raise InputError(
                f"source {self.source.name!r} checks freshness on {cfg.timestamp_column}, "
                "which the query does not select",
                hint=f"add {self._ts_column} (or MAX({self._ts_column}) AS {self._ts_column}) "
                "to the query's columns",
            )

    def fetch(self, n: int) -> list[list[JSON]]:
        """Up to ``n`` rows as JSON lists, in column order."""
        assert self.result is not None
        self._go_on()
        self._deadline = time.monotonic() + self.source.config.statement_timeout
        rows: list[Any] = self._peeked[:n]
        self._peeked = self._peeked[n:]
        try:
            if len(rows) < n and not self._exhausted:
                more = self.result.fetchmany(n - len(rows))
                self._exhausted = len(more) < n - len(rows)
                rows += more
        except sa.exc.DBAPIError as exc:
            raise self.source._read_error(exc, self.plan, self._timed_out) from None
        self.delivered += len(rows)
        return [[json_value(v) for v in row] for row in rows]

    def next_batch(self) -> tuple[list[list[JSON]], bool]:
        """The next batch and whether it is the last, fetching one row ahead to know."""
        cfg = self.source.config
        allowed = cfg.row_limit - self.delivered
        rows = self.fetch(min(cfg.batch_rows, allowed + 1))
        if len(rows) > allowed:
            raise self._over_limit()
        if len(rows) < min(cfg.batch_rows, allowed + 1):
            return rows, True
        assert self.result is not None
        try:
            self._peeked = list(self.result.fetchmany(1))
            self._exhausted = not self._peeked
        except sa.exc.DBAPIError as exc:
            raise self.source._read_error(exc, self.plan, self._timed_out) from None
        if self._peeked and len(rows) == allowed:
            raise self._over_limit()
        return rows, not self._peeked

    def _over_limit(self) -> SourceError:
        limit = self.source.config.row_limit
        return final(
            f"source {self.source.name!r}: the query returned more than {limit} rows "
            "(the source's row_limit); nothing past the limit was read",
            hint="narrow the query (WHERE, LIMIT) or raise row_limit",
        )

    def freshness(
        self, rows: list[list[JSON]], start: int
    ) -> tuple[list[dict[str, JSON]], list[Rejected], float | None]:
        """The rows as dicts, those whose timestamp cannot be read, and the newest one."""
        accepted: list[dict[str, JSON]] = []
        rejected: list[Rejected] = []
        newest: float | None = None
        for i, row in enumerate(rows, start + 1):
            record = dict(zip(self.keys, row, strict=True))
            if self._ts_index is None:
                accepted.append(record)
                continue
            value = row[self._ts_index]
            when = _epoch(value)
            if value is not None and when is None:
                rejected.append(
                    Rejected(
                        raw=record,
                        reason=f"{self._ts_column} is {value!r}, not a date or time",
                        rule="timestamp",
                        where=f"row {i}",
                    )
                )
                continue
            accepted.append(record)
            if when is not None and (newest is None or when > newest):
                newest = when
        return accepted, rejected, newest

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            raw = conn.connection.dbapi_connection
            if isinstance(raw, sqlite3.Connection):
                raw.set_progress_handler(None, 0)
        with contextlib.suppress(sa.exc.DBAPIError):
            unread = self.result is not None and (bool(self._peeked) or not self._exhausted)
            if unread and self.source.dialect == "mysql":
                # PyMySQL would read the unread rest of a streamed result to its end on
                # closing it: drop the connection instead (the pool opens a fresh one).
                assert self.result is not None
                _forget_unbuffered(self.result)
                conn.invalidate()
            else:
                if self.result is not None:  # PostgreSQL: CLOSE the server-side cursor
                    with contextlib.suppress(Exception):
                        self.result.close()
                conn.rollback()
        with contextlib.suppress(sa.exc.DBAPIError):
            conn.close()

    def _sqlite_progress(self) -> int:
        if self._cancelled:
            return 1
        if time.monotonic() > self._deadline:
            self._timed_out = True
            return 1
        return 0

    # Event-loop side: called when the awaiting task is cancelled mid-call.
    def interrupt(self) -> None:
        self._cancelled = True
        conn = self.conn
        if conn is None:
            return
        with contextlib.suppress(Exception):
            raw = conn.connection.dbapi_connection
            if isinstance(raw, sqlite3.Connection):
                raw.interrupt()
            elif raw is not None and hasattr(raw, "cancel"):  # psycopg: a cancel request
                raw.cancel()


def _forget_unbuffered(result: CursorResult[Any]) -> None:
    """Make PyMySQL forget an unread streamed result, whose rest it would otherwise read
    to the end when the cursor closes (or fail to, from a closed connection, in ``__del__``).
    The connection is dropped right after, so nothing reads from it again."""
    pending = getattr(result.cursor, "_result", None)
    if pending is not None and hasattr(pending, "unbuffered_active"):
        pending.unbuffered_active = False
        setattr(result.cursor, "_result", None)  # noqa: B010 - a private attribute


def final(message: str, *, hint: str | None = None) -> SourceError:
    """A SourceError that a retry would only repeat."""
    err = SourceError(message, hint=hint)
    err.non_retryable = True
    return err


def hash_rows(h: Any, rows: list[list[JSON]]) -> None:
    """Add ``rows`` to the running digest row by row, so batch sizes do not change it."""
    for row in rows:
        h.update(orjson.dumps(row))
        h.update(b"\n")


async def in_thread(fn: Callable[[], Any], interrupt: Callable[[], None]) -> Any:
    """``fn()`` in a worker thread. Cancelled, it interrupts the statement and waits for
    the thread to let go of the connection, so closing it never races a running call."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        interrupt()
        with contextlib.suppress(BaseException):
            await task
        raise


def parse_cursor(name: str, cursor: JSON) -> tuple[int, str]:
    if cursor is None:
        return 0, hashlib.sha256().hexdigest()
    if (
        isinstance(cursor, dict)
        and isinstance(cursor.get("rows"), int)
        and not isinstance(cursor.get("rows"), bool)
        and isinstance(cursor.get("digest"), str)
        and cursor["rows"] >= 0  # type: ignore[operator]
    ):
        return int(cursor["rows"]), str(cursor["digest"])  # type: ignore[arg-type]
    raise InputError(
        f"source {name!r}: {cursor!r} is not a cursor this source gave",
        hint="resume only from the cursor of a batch this source read",
    )


def _epoch(value: JSON) -> float | None:
    """Seconds since the epoch of an ISO 8601 date or time (naive means UTC) or a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()
