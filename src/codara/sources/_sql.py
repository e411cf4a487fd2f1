"""The SQL connector: read-only, time-bounded, parameterised reads of any SQLite,
PostgreSQL or MariaDB/MySQL database SQLAlchemy can reach.

A query runs only after the scope checker accepted it (:meth:`SqlSource.plan`), and then
the database itself is asked to refuse writes, so a query the checker should have refused
still cannot change anything:

========== ==================================== ========================================
database   read-only                            statement timeout
========== ==================================== ========================================
SQLite     opened ``mode=ro`` + ``query_only``  a progress handler that aborts the
                                                statement once the deadline has passed
PostgreSQL ``SET TRANSACTION READ ONLY``        ``SET LOCAL statement_timeout``
MariaDB    ``SET SESSION TRANSACTION READ      session ``max_statement_time`` (seconds)
           ONLY`` + ``START TRANSACTION READ
           ONLY``
========== ==================================== ========================================

On PostgreSQL a streamed query runs as ``DECLARE ... CURSOR FOR``, which takes only a
``SELECT`` (or ``VALUES``): an ``INSERT`` fails there before read-only mode is even needed;
a write hidden in a function (``SELECT nextval(...)``, a user function that inserts) is
what ``READ ONLY`` refuses.

Reads stream: one read-only transaction per :meth:`SqlSource.batches` call, rows fetched
``batch_rows`` at a time (a server-side cursor on PostgreSQL, an unbuffered one on
MariaDB) in a worker thread, so the event loop never waits on the driver.

``statement_timeout`` bounds the database's work. On SQLite and PostgreSQL it applies to
each fetch (PostgreSQL runs each batch as its own ``FETCH``); MariaDB counts a streamed
statement until its last row is read, so there it bounds the whole read, including the
time the engine spends between batches (measured: a paused reader is cut off).

Resuming (``batches(plan, cursor)``) runs the query again and skips the rows already
delivered. That is only right if the query gives the same rows in the same order, which
neither a query without ``ORDER BY`` nor data changed in between guarantees, so instead
of trusting it the cursor carries a digest of the rows delivered
(``{"rows": n, "digest": sha256}``): the skipped rows must hash to it, or the read stops
with a SourceError rather than deliver a row twice or miss one.

Freshness: with ``timestamp_column`` declared, a batch's ``newest`` is the latest value of
that column among its rows (matched by the column's name in the result; a naive time is
taken as UTC, times are read in UTC); a row whose value is not a date or time goes to
``rejected`` (rule ``timestamp``), not away. A query that does not select the column has
no ``newest``, and with a ``max_age`` set it is refused before a row is delivered (an
unknown age must not pass for a fresh one). Not a ``MAX()`` over the whole table: that
says whether the table is fed, not how old the rows a decision used are.

Version: PostgreSQL's WAL position at the start of the read's snapshot (``pg-lsn:...``;
the same value twice means nothing was written in between, anywhere in the cluster).
None on SQLite (``PRAGMA data_version`` only counts other connections' commits, per
connection) and MariaDB (no change counter without a binary log): freshness there rests
on the timestamp column.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import math
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

import orjson
import sqlalchemy as sa
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from sqlalchemy.engine import URL, Connection, CursorResult, Engine

from codara.errors import ConfigError, InputError, ScopeError, SourceError
from codara.sources._base import JSON, Batch, Plan, Rejected, Source, SourceConfig, json_value

__all__ = ["ScopeCheck", "SqlSource", "SqlSourceConfig"]

ScopeCheck = Callable[[str], tuple[Iterable[str], Iterable[str]]]
"""The scope checker ``plan`` calls: ``check(sql) -> (touched, params)``, the
``table.column`` names the query reads and the ``:name`` parameters it uses (names without
the colon). It raises :class:`~codara.errors.ScopeError` for a query outside the scope."""

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")  # sqlalchemy.text's own :name pattern
_PG_CONFIG_FAILURES = ("does not exist", "authentication failed", "pg_hba.conf")
_MYSQL_CONFIG_ERRNOS = frozenset({1044, 1045, 1049, 1698})  # denied, denied, unknown db
_MYSQL_TIMEOUT_ERRNOS = frozenset({1969, 3024})  # MariaDB max_statement_time, MySQL's
_MYSQL_READ_ONLY_ERRNOS = frozenset({1792, 1290})
_PG_READ_ONLY = "25006"
_PG_CANCELED = "57014"
_SQLITE_READONLY = 8


class SqlSourceConfig(SourceConfig):
    """``[sources.NAME]`` with ``kind = "sql"``."""

    kind: Literal["sql"] = "sql"
    url: SecretStr | None = None
    """Any SQLAlchemy URL: ``sqlite:///crm.db``, ``postgresql://user@host/db``,
    ``mariadb://user@host/db``. A password belongs in ``url_env``, not in the file."""
    url_env: str | None = Field(default=None, pattern=_ENV_NAME, validate_default=True)
    """The environment variable holding the URL, instead of ``url``."""
    tables: dict[str, tuple[str, ...]] = Field(min_length=1)
    """The scope: each table a query may read and the columns it may read from it."""
    row_limit: int = Field(default=10_000, ge=1, le=10_000_000)
    """The most rows one read may return; a query returning more fails (SourceError)."""
    statement_timeout: float = Field(default=30.0, gt=0, le=86_400)
    """Seconds the database may work on a read (see the module docs per database)."""
    timestamp_column: str | None = None
    """``table.column`` whose newest value among the rows read is the data's age."""

    @field_validator("url_env")
    @classmethod
    def _one_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator, not a model one: the error then shows the variable's name,
        # never the URL (which may hold a password).
        if (info.data.get("url") is None) == (value is None):
            raise ValueError("give the database's URL as exactly one of url or url_env")
        return value

    @field_validator("tables")
    @classmethod
    def _columns(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for table, columns in value.items():
            if not columns:
                raise ValueError(f"table {table!r} lists no column a query may read")
        return value

    @field_validator("timestamp_column")
    @classmethod
    def _in_scope(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        table, _, column = value.rpartition(".")
        tables: dict[str, tuple[str, ...]] = info.data.get("tables") or {}
        scoped = {c.lower() for c in tables.get(table, ())}
        if not table or column.lower() not in scoped:
            raise ValueError(f"{value!r} must be TABLE.COLUMN with a column of `tables`")
        return value


class SqlSource(Source):
    """One SQL database, read through its declared scope."""

    kind: ClassVar[str] = "sql"
    config: SqlSourceConfig

    def __init__(
        self,
        name: str,
        config: SqlSourceConfig,
        *,
        check: ScopeCheck | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``check`` is the scope checker (None: not wired, every query is refused);
        ``environ`` where ``url_env`` is looked up (default ``os.environ``)."""
        super().__init__(name, config)
        self._scope_check = check
        url = _url(name, config, os.environ if environ is None else environ)
        self.redacted_url = url.render_as_string(hide_password=True)
        """The URL with its password hidden: the only form errors and logs show."""
        self._password = url.password
        self.engine = _engine(name, url, config)
        self.dialect: Literal["sqlite", "postgresql", "mysql"] = _dialect(self.engine)

    def __repr__(self) -> str:
        return f"SqlSource({self.name!r}, {self.redacted_url!r})"

    # -- plan -------------------------------------------------------------------------------
    def plan(self, target: str, /, **params: Any) -> Plan:
        """Check the query ``target`` and its ``:name`` parameters before any read."""
        touched, used = self._check_scope(target)
        bound = set(_BIND.findall(target))
        if bound != used:
            # Two parsers disagree on what the query binds (a ``:name`` inside a string
            # literal is bound by SQLAlchemy): run neither reading.
            raise ScopeError(
                f"source {self.name!r}: the query's parameters are ambiguous "
                f"(the scope check sees {sorted(used)}, the driver would bind {sorted(bound)})",
                rule="params",
                hint="write literal text without ':name' in it, or pass it as a parameter",
            )
        missing, unused = sorted(used - params.keys()), sorted(params.keys() - used)
        if missing or unused:
            what = "; ".join(
                p
                for p in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"not used by the query: {', '.join(unused)}" if unused else "",
                )
                if p
            )
            raise InputError(
                f"source {self.name!r}: parameters do not match the query ({what})",
                hint="pass exactly the :name parameters the query uses, as keyword arguments",
            )
        for key, value in params.items():
            if not _scalar(value):
                raise InputError(
                    f"source {self.name!r}: parameter {key!r} is a {type(value).__name__}; "
                    "parameters must be JSON scalars (str, int, float, bool or None)",
                    hint="pass one value per parameter; dates as ISO 8601 strings",
                )
        return Plan(self.name, target, dict(params), tuple(touched))

    def _check_scope(self, sql: str) -> tuple[list[str], set[str]]:
        """The one call site of the scope checker. Not wired: nothing may run."""
        if self._scope_check is None:
            raise ScopeError(
                f"source {self.name!r}: no scope checker is wired, so every query is refused",
                rule="unchecked",
            )
        touched, used = self._scope_check(sql)
        return list(touched), set(used)

    # -- read -------------------------------------------------------------------------------
    async def check(self) -> None:
        """Connect once and read zero rows of every declared table and column, so a wrong
        URL, password, database, table or column stops at load, not in a run."""
        await asyncio.to_thread(self._check_sync)

    def _check_sync(self) -> None:
        try:
            conn = self.engine.connect()
        except sa.exc.DBAPIError as exc:
            raise self._connect_error(exc) from None
        prep = self.engine.dialect.identifier_preparer
        with conn:
            self._begin(conn)
            for table, columns in self.config.tables.items():
                sql = f"SELECT * FROM {_quoted(prep, table)} WHERE 1 = 0"
                try:
                    keys = {k.lower() for k in conn.exec_driver_sql(sql).keys()}  # noqa: SIM118
                except sa.exc.DBAPIError as exc:
                    conn.rollback()
                    raise ConfigError(
                        f"source {self.name!r}: table {table!r} cannot be read at "
                        f"{self.redacted_url} ({self._first_line(exc)})",
                        hint="fix the table's name in `tables`, or grant the user SELECT on it",
                    ) from None
                absent = [c for c in columns if c.lower() not in keys]
                if absent:
                    raise ConfigError(
                        f"source {self.name!r}: table {table!r} has no column {', '.join(absent)}",
                        hint=f"its columns are {', '.join(sorted(keys))}",
                    )
            conn.rollback()

    async def batches(self, plan: Plan, cursor: JSON = None) -> AsyncGenerator[Batch, None]:
        """Read ``plan`` in one read-only transaction, ``batch_rows`` rows at a time."""
        skip, digest = _parse_cursor(self.name, cursor)
        read = _Read(self, plan)
        try:
            await _in_thread(read.start, read.interrupt)
            version = read.version
            seen, h = 0, hashlib.sha256()
            while seen < skip:  # resuming: the rows delivered before must come again
                rows = await _in_thread(
                    functools.partial(read.fetch, min(skip - seen, 10_000)), read.interrupt
                )
                if not rows:
                    break
                seen += len(rows)
                _digest(h, rows)
            if seen != skip or h.hexdigest() != digest:
                raise _final(
                    f"source {self.name!r}: cannot resume the read after {skip} rows: the "
                    "query no longer gives the same first rows (the data changed, or the "
                    "query's order is not deterministic)",
                    hint="give the query an ORDER BY on a unique key; the step must read anew",
                )
            while True:
                rows, last = await _in_thread(read.next_batch, read.interrupt)
                accepted, rejected, newest = read.freshness(rows, seen)
                seen += len(rows)
                _digest(h, rows)
                yield Batch(
                    rows=accepted,
                    rejected=rejected,
                    cursor=None if last else {"rows": seen, "digest": h.hexdigest()},
                    version=version,
                    newest=newest,
                )
                if last:
                    break
        finally:
            await asyncio.to_thread(read.close)

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.dispose)

    # -- what the database says, said without secrets ----------------------------------------
    def _begin(self, conn: Connection, timeout: float | None = None) -> None:
        """Start a read-only transaction with the statement timeout on ``conn``."""
        seconds = self.config.statement_timeout if timeout is None else timeout
        if self.dialect == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {math.ceil(seconds * 1000)}")
            # Times read the same whatever the server's zone: a replay compares equal.
            conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
        elif self.dialect == "mysql":
            if getattr(self.engine.dialect, "is_mariadb", False):
                conn.exec_driver_sql(f"SET SESSION max_statement_time = {seconds:.6f}")
            else:
                ms = math.ceil(seconds * 1000)  # MySQL: milliseconds, SELECTs only
                conn.exec_driver_sql(f"SET SESSION max_execution_time = {ms}")
            # Both: a read-only transaction alone lets DDL through (it commits implicitly
            # and runs outside it; measured on MariaDB 10.11), the session default stops it.
            conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
            conn.exec_driver_sql("SET SESSION time_zone = '+00:00'")  # TIMESTAMPs in UTC
            conn.exec_driver_sql("START TRANSACTION READ ONLY, WITH CONSISTENT SNAPSHOT")
        else:
            conn.exec_driver_sql("BEGIN")

    def _first_line(self, exc: BaseException, params: Mapping[str, JSON] | None = None) -> str:
        """The driver's message, first line, with the password and parameter values out."""
        orig = getattr(exc, "orig", None) or exc
        text = str(orig.args[-1] if isinstance(orig.args, tuple) and orig.args else orig)
        line = text.strip().splitlines()[0] if text.strip() else type(orig).__name__
        secrets = [self._password or ""] + [
            v for v in (params or {}).values() if isinstance(v, str)
        ]
        for secret in sorted(secrets, key=len, reverse=True):
            if len(secret) >= 3:
                line = line.replace(secret, "***")
        return line

    def _connect_error(self, exc: sa.exc.DBAPIError) -> SourceError | ConfigError:
        reason = self._first_line(exc)
        errno = _errno(exc)
        if (
            (self.dialect == "postgresql" and any(s in reason for s in _PG_CONFIG_FAILURES))
            or (self.dialect == "mysql" and errno in _MYSQL_CONFIG_ERRNOS)
            or self.dialect == "sqlite"
        ):
            hint = (
                "check the file's path (a SQLite source is opened read-only, never created)"
                if self.dialect == "sqlite"
                else "check the user, the password and the database name in the URL"
            )
            return ConfigError(
                f"source {self.name!r}: {self.redacted_url} refused the connection: {reason}",
                hint=hint,
            )
        return SourceError(
            f"source {self.name!r}: cannot reach {self.redacted_url}: {reason}",
            hint="is the database server running and listening at that host and port?",
        )

    def _read_error(self, exc: BaseException, plan: Plan, timed_out: bool) -> Exception:
        reason = self._first_line(exc, plan.params)
        errno, state = _errno(exc), _sqlstate(exc)
        if (
            timed_out
            or state == _PG_CANCELED
            or (self.dialect == "mysql" and errno in _MYSQL_TIMEOUT_ERRNOS)
        ):
            return SourceError(
                f"source {self.name!r}: the query exceeded statement_timeout "
                f"({self.config.statement_timeout:g} s)",
                hint="make the query cheaper (an index, a narrower WHERE) or raise the "
                "source's statement_timeout",
            )
        if (
            state == _PG_READ_ONLY
            or (self.dialect == "mysql" and errno in _MYSQL_READ_ONLY_ERRNOS)
            or (self.dialect == "sqlite" and errno == _SQLITE_READONLY)
        ):
            return ScopeError(
                f"source {self.name!r}: the database refused a write: {reason}",
                rule="write",
                hint="a source is read-only; queries may only read",
            )
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return SourceError(f"source {self.name!r}: the connection was lost: {reason}")
        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            return SourceError(f"source {self.name!r}: the read failed: {reason}")
        return _final(
            f"source {self.name!r}: the database refused the query: {reason}",
            hint="the query passed the scope check but not the database: check the scope's "
            "table and column names against the database",
        )


class _Read:
    """One ``batches`` call's connection, transaction and result, used from worker threads
    one call at a time (``_in_thread`` waits for a call before the next starts)."""

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
                raise _final(f"source {src.name!r}: the query returned no rows (not a SELECT?)")
            self.keys = list(self.result.keys())
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
        return _final(
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


def _final(message: str, *, hint: str | None = None) -> SourceError:
    """A SourceError that a retry would only repeat."""
    err = SourceError(message, hint=hint)
    err.non_retryable = True
    return err


def _digest(h: Any, rows: list[list[JSON]]) -> None:
    """Add ``rows`` to the running digest row by row, so batch sizes do not change it."""
    for row in rows:
        h.update(orjson.dumps(row))
        h.update(b"\n")


async def _in_thread(fn: Callable[[], Any], interrupt: Callable[[], None]) -> Any:
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


def _url(name: str, config: SqlSourceConfig, environ: Mapping[str, str]) -> URL:
    if config.url_env is not None:
        raw = environ.get(config.url_env, "")
        if not raw:
            raise ConfigError(
                f"source {name!r}: environment variable {config.url_env} is not set",
                hint=f"export {config.url_env}=<the database URL, e.g. postgresql://user:"
                "password@host/db>",
            )
        where = f"${config.url_env}"
    else:
        assert config.url is not None
        raw, where = config.url.get_secret_value(), "url"
    try:
        url = sa.engine.make_url(raw)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(
            f"source {name!r}: {where} is not a database URL",
            hint="use sqlite:///path/to.db, postgresql://user@host:5432/db or "
            "mariadb://user@host:3306/db",
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        url = url.set(drivername="postgresql+psycopg")
    elif backend in ("mysql", "mariadb") and driver == "":
        url = url.set(drivername=f"{backend}+pymysql")
    return url


def _engine(name: str, url: URL, config: SqlSourceConfig) -> Engine:
    backend = url.get_backend_name()
    connect_timeout = max(2, math.ceil(min(config.statement_timeout, 30)))
    kwargs: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": True}
    if backend == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:"):
            raise ConfigError(
                f"source {name!r}: an in-memory SQLite database has nothing to read",
                hint="give the database file: sqlite:///path/to/crm.db",
            )
        if url.query.get("uri") in ("true", "1"):  # sqlite:///file:crm.db?uri=true&...
            options = {k: v for k, v in url.query.items() if k not in ("uri", "mode")}
            target = f"{path}?{urllib.parse.urlencode({**options, 'mode': 'ro'}, doseq=True)}"
        else:
            target = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"

        def creator() -> sqlite3.Connection:
            conn = sqlite3.connect(target, uri=True, check_same_thread=False)
            conn.execute("PRAGMA query_only = 1")
            return conn

        kwargs["creator"] = creator
    elif backend in ("postgresql", "mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": connect_timeout}
    try:
        return sa.create_engine(url, **kwargs)
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"source {name!r}: no SQLAlchemy driver for {url.drivername!r} ({exc})",
            hint="use sqlite://, postgresql+psycopg:// or mariadb+pymysql://",
        ) from None
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"source {name!r}: the URL is not usable: {exc}") from None


def _dialect(engine: Engine) -> Literal["sqlite", "postgresql", "mysql"]:
    name = engine.dialect.name
    if name == "sqlite":
        return "sqlite"
    if name == "postgresql":
        return "postgresql"
    if name in ("mysql", "mariadb"):
        return "mysql"
    raise ConfigError(
        f"SQL sources read SQLite, PostgreSQL and MariaDB/MySQL, not {name}",
        hint="Codara can only make reads read-only and time-bounded on those databases",
    )


def _quoted(preparer: Any, table: str) -> str:
    return ".".join(preparer.quote(part) for part in table.split("."))


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int | str)


def _parse_cursor(name: str, cursor: JSON) -> tuple[int, str]:
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


def _errno(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return None if code is None else code & 0xFF
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return state if isinstance(state, str) else None
