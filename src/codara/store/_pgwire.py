"""PostgreSQL's hot statements (the journal append and read, the claim, a group commit's
statements) sent through libpq itself.

A durable step on PostgreSQL is one statement, and psycopg's async ``execute`` added a lot
of client CPU to it: a cursor and a set of adapters per call, the connection's lock, the
prepared-statement cache, and for every wait an epoll registration, a future and a timer.
Measured on the benchmark machine: about 80 µs more client CPU per statement than the path
below, which costs about 25 µs more than a synchronous psycopg ``execute``
(``docs/architecture.md``, "The write path"). For a statement whose text and parameter
types never change none of that is needed, so :class:`Prepared` keeps psycopg's connection
and its libpq wrapper (:mod:`psycopg.pq`, a public interface) and does the rest itself:

- the statement is prepared once per connection under a name of its own (``PQprepare``
  with the parameter types fixed), and each call is one ``PQsendQueryPrepared``: Bind,
  Execute, Sync, one round trip;
- parameters go as text, encoded here (``str``, ``int``, ``float`` by ``repr``, which the
  server reads back to the same double; ``None`` as NULL; a ``list`` as a one-dimensional
  array literal; ``bytes`` as they are, e.g. a JSON document), on a connection whose
  client encoding is UTF-8 (the store opens its connections so); rows come back as text;
- the reply is awaited with one reader callback on the connection's socket.

Errors are psycopg's own: the server's error becomes the same :class:`psycopg.Error`
subclass psycopg raises (with its diagnostics: the store reads the violated constraint's
name), and a failure of the connection an :class:`psycopg.OperationalError`. A call
cancelled while it waits leaves the connection with a statement in flight; the pool sees
that (its transaction status is not idle) and discards the connection, as it does for
psycopg's own cancelled calls.

The connection must be lent to one caller at a time (the store's pool does that); a
transaction psycopg opened on it may be open. It stays usable by psycopg afterwards, which
never learns of the statement's name.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq

__all__ = ["Call", "Prepared", "numbered", "pipeline", "rows"]

Conn = psycopg.AsyncConnection[Any]

_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)


def numbered(sql: str) -> str:
    """Codara's ``?`` SQL with PostgreSQL's numbered placeholders ``$1``, ``$2``..."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


def _encode(value: Any) -> bytes | None:
    """One parameter in PostgreSQL's text format."""
    if value is None:
        return None
    kind = type(value)
    if kind is str:
        return value.encode()  # type: ignore[no-any-return]
    if kind is int:
        return str(value).encode()
    if kind is float:
        return repr(value).encode()  # the shortest text that reads back to the same double
    if kind is bool:
        return b"t" if value else b"f"
    if kind is list:
        return _array(value).encode()
    if kind is bytes:  # already text (a JSON document)
        return value  # type: ignore[no-any-return]
    raise TypeError(f"cannot send a {kind.__name__} as a text parameter")


def _array(values: list[Any]) -> str:
    """A one-dimensional array in PostgreSQL's text format (elements quoted, NULL bare)."""
    items = []
    for v in values:
        if v is None:
            items.append("NULL")
        elif type(v) is str:
            items.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif type(v) is float:
            items.append(repr(v))
        elif type(v) is int:
            items.append(str(v))
        else:
            raise TypeError(f"cannot send a {type(v).__name__} in a text array")
    return "{" + ",".join(items) + "}"


class Prepared:
    """One statement with fixed parameter types, prepared on each connection it meets."""

    def __init__(self, name: str, sql: str, types: Sequence[str]) -> None:
        """``sql`` uses ``$1``, ``$2``... placeholders; ``types`` names their types (``text``,
        ``int4``, ``float8``, ``text[]``: psycopg's type registry gives their oids)."""
        registry = psycopg.adapters.types
        oids = []
        for t in types:
            info = registry.get(t)
            if info is None:
                raise ValueError(f"unknown PostgreSQL type {t!r}")
            oids.append(info.array_oid if t.endswith("[]") else info.oid)
        self.name = name.encode()
        self.sql = sql.encode()
        self.oids = oids
        self._ready: weakref.WeakSet[Conn] = weakref.WeakSet()

    async def execute(self, conn: Conn, params: Sequence[Any]) -> int:
        """Run the statement on ``conn`` (preparing it first if this connection has not
        seen it); return its row count."""
        return (await self._run(conn, params)).command_tuples or 0

    async def fetch(self, conn: Conn, params: Sequence[Any]) -> list[tuple[str | None, ...]]:
        """Run the statement; return its rows, each value as text (None for NULL)."""
        return rows(await self._run(conn, params))

    async def _run(self, conn: Conn, params: Sequence[Any]) -> pq.abc.PGresult:
        args = [_encode(v) for v in params]
        if conn not in self._ready:
            await self._prepare(conn)
        try:
            return await _call(conn, lambda pg: pg.send_query_prepared(self.name, args))
        except pg_errors.InvalidSqlStatementName:  # deallocated behind our back: once more
            self._ready.discard(conn)
            await self._prepare(conn)
            return await _call(conn, lambda pg: pg.send_query_prepared(self.name, args))

    async def _prepare(self, conn: Conn) -> None:
        if conn.pgconn.parameter_status(b"client_encoding") != b"UTF8":
            raise RuntimeError("Prepared needs a connection with a UTF-8 client encoding")
        await _call(conn, lambda pg: pg.send_prepare(self.name, self.sql, self.oids))
        self._ready.add(conn)


Call = tuple["Prepared | bytes", Sequence[Any]]
"""One statement of a pipeline: a prepared statement and its parameters, or plain SQL
without parameters (``b"BEGIN"``) and ``()``."""


async def pipeline(conn: Conn, calls: Sequence[Call]) -> list[pq.abc.PGresult]:
    """Send ``calls`` in one libpq pipeline (one round trip) and return their results.

    The first error raises once every reply is read (the server skips what follows an
    error until the pipeline's end); the caller rolls back a transaction the pipeline
    opened. Statements are prepared on ``conn`` first (once per connection)."""
    for stmt, _ in calls:
        if isinstance(stmt, Prepared) and conn not in stmt._ready:
            await stmt._prepare(conn)
    pg = conn.pgconn
    encoded = [(stmt, [_encode(v) for v in params]) for stmt, params in calls]
    pg.enter_pipeline_mode()
    for stmt, args in encoded:
        if isinstance(stmt, Prepared):
            pg.send_query_prepared(stmt.name, args)
        else:
            pg.send_query_params(stmt, None)
    pg.pipeline_sync()
    if pg.flush():
        await _flush(pg)
    loop = asyncio.get_running_loop()
    results: list[pq.abc.PGresult] = []
    error: psycopg.Error | None = None
    while True:
        got = await _next_result(loop, pg)
        if got is None:
            continue  # the end of one statement's results
        if got.status == pq.ExecStatus.PIPELINE_SYNC:
            break
        if got.status == pq.ExecStatus.PIPELINE_ABORTED:
            continue  # skipped after an earlier error
        if got.status not in _OK and error is None:
            error = pg_errors.error_from_result(got, encoding="utf-8")
        results.append(got)
    pg.exit_pipeline_mode()
    if error is not None:
        raise error
    return results


async def _next_result(
    loop: asyncio.AbstractEventLoop, pg: pq.abc.PGconn
) -> pq.abc.PGresult | None:
    pg.consume_input()
    while pg.is_busy():
        await _readable(loop, pg.socket)
        pg.consume_input()
    return pg.get_result()


def rows(result: pq.abc.PGresult) -> list[tuple[str | None, ...]]:
    """A result's rows, each value as text (None for NULL)."""
    fields = range(result.nfields)
    get = result.get_value
    return [
        tuple(None if (v := get(i, j)) is None else v.decode() for j in fields)
        for i in range(result.ntuples)
    ]


async def _call(conn: Conn, send: Any) -> pq.abc.PGresult:
    """Send one request (``send(pgconn)``), wait for its reply; its one result, or raise."""
    pg = conn.pgconn
    send(pg)
    if pg.flush():
        await _flush(pg)
    result: pq.abc.PGresult | None = None
    error: psycopg.Error | None = None
    loop: asyncio.AbstractEventLoop | None = None
    while True:
        pg.consume_input()
        if pg.is_busy():
            if loop is None:
                loop = asyncio.get_running_loop()
            await _readable(loop, pg.socket)
            continue
        got = pg.get_result()
        if got is None:
            break
        if got.status not in _OK and error is None:
            error = pg_errors.error_from_result(got, encoding="utf-8")
        result = got
    if error is not None:
        raise error
    if result is None:
        raise psycopg.OperationalError("the server sent no result for the statement")
    return result


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Wait until ``fd`` has something to read."""
    waiter = loop.create_future()
    loop.add_reader(fd, _wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_reader(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _flush(pg: pq.abc.PGconn) -> None:
    """Send what libpq could not write at once (a large row), reading meanwhile so that
    the server, should it answer early, never blocks on a full socket."""
    loop = asyncio.get_running_loop()
    fd = pg.socket
    while True:
        waiter = loop.create_future()
        loop.add_writer(fd, _wake, waiter)
        loop.add_reader(fd, _wake, waiter)
        try:
            await waiter
        finally:
            loop.remove_writer(fd)
            loop.remove_reader(fd)
        pg.consume_input()
        if not pg.flush():
            return
