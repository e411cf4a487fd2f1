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
import functools
import hashlib
import math
import os
import re
import sqlite3
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

import sqlalchemy as sa
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from sqlalchemy.engine import URL, Connection, Engine

from codara.errors import ConfigError, InputError, ScopeError, SourceError
from codara.sources._base import JSON, Batch, Plan, Source, SourceConfig
from codara.sources._sqlread import Read, final, hash_rows, in_thread, parse_cursor

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
    complete_tables: tuple[str, ...] = ()
    """Tables whose ``tables`` entry lists every column they have: only over those may a
    query say ``SELECT *`` or ``t.*`` (elsewhere a star is refused: the check cannot know
    what it would expand to)."""
    max_connections: int = Field(default=5, ge=1, le=1000)
    """The most connections one process opens to the database. A read holds one from its
    start to its last batch; more reads than this at once wait (on the event loop, not in
    a thread) for one to end."""
    functions: tuple[str, ...] = ()
    """SQL functions beyond the built-in safe ones that queries may call (a user-defined
    function can read any table, so unknown ones are refused); the refused ones (file,
    system and catalogue functions, sleeps) cannot be allowed."""

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


def _sqlglot_check(name: str, config: SqlSourceConfig, dialect: str) -> ScopeCheck:
    """The scope checker of :mod:`codara.sources._sqlscope` over the declared tables."""
    from codara.sources._sqlscope import SqlScope, require_sql

    try:
        scope = SqlScope.from_config(
            config.tables,
            {"postgresql": "postgres"}.get(dialect, dialect),
            complete=config.complete_tables,
            functions=config.functions,
        )
    except ConfigError as exc:
        raise ConfigError(f"[sources.{name}] tables: {exc.message}", hint=exc.hint) from exc

    # The scope is fixed for the source's life, so one query text has one verdict: an allowed
    # one is remembered (a workflow reads with the same few texts; sqlglot's parse and
    # qualify cost 1-2 ms each). A refused one raises and is checked again each time.
    @functools.lru_cache(maxsize=512)
    def check(sql: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        verdict = require_sql(sql, scope)
        return tuple(verdict.columns), tuple(p.lstrip(":") for p in verdict.params)

    return check


class SqlSource(Source):
    """One SQL database, read through its declared scope."""

    kind: ClassVar[str] = "sql"
    config_model: ClassVar[type[SourceConfig]] = SqlSourceConfig
    config: SqlSourceConfig

    def __init__(
        self,
        name: str,
        config: SqlSourceConfig,
        *,
        check: ScopeCheck | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``check`` is the scope checker (None: sqlglot's, over ``tables``);
        ``environ`` where ``url_env`` is looked up (default ``os.environ``)."""
        super().__init__(name, config)
        url = _url(name, config, os.environ if environ is None else environ)
        self.redacted_url = url.render_as_string(hide_password=True)
        """The URL with its password hidden: the only form errors and logs show."""
        self._password = url.password
        self.engine = _engine(name, url, config)
        self.dialect: Literal["sqlite", "postgresql", "mysql"] = _dialect(self.engine)
        if check is None:
            check = _sqlglot_check(name, config, self.dialect)
        self._scope_check = check
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

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
        """The one call site of the scope checker."""
        touched, used = self._scope_check(sql)
        return list(touched), set(used)

    # -- read -------------------------------------------------------------------------------
    async def check(self) -> None:
        """Connect once and read zero rows of every declared table and column, so a wrong
        URL, password, database, table or column stops at load, not in a run."""
        async with self._slot():
            await asyncio.to_thread(self._check_sync)

    def _slot(self) -> asyncio.Semaphore:
        """A connection of the pool, taken on the event loop. Waiting for one in a worker
        thread would deadlock: the threads all waiting, the reads that hold the
        connections could never run their next call (a test reproduces it)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.config.max_connections))
        return self._slots[1]

    def _check_sync(self) -> None:
        try:
            conn = self.engine.connect()
        except sa.exc.DBAPIError as exc:
            raise self._connect_error(exc) from None
        prep = self.engine.dialect.identifier_preparer
        with conn:
            try:
                self._begin(conn)
            except sa.exc.DBAPIError as exc:
                raise SourceError(
                    f"source {self.name!r}: {self.redacted_url} refused a read-only "
                    f"transaction: {self._first_line(exc)}"
                ) from None
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
        skip, digest = parse_cursor(self.name, cursor)
        read = Read(self, plan)
        slot = self._slot()
        await slot.acquire()
        try:
            await in_thread(read.start, read.interrupt)
            version = read.version
            seen, h = 0, hashlib.sha256()
            while seen < skip:  # resuming: the rows delivered before must come again
                rows = await in_thread(
                    functools.partial(read.fetch, min(skip - seen, 10_000)), read.interrupt
                )
                if not rows:
                    break
                seen += len(rows)
                hash_rows(h, rows)
            if seen != skip or h.hexdigest() != digest:
                raise final(
                    f"source {self.name!r}: cannot resume the read after {skip} rows: the "
                    "query no longer gives the same first rows (the data changed, or the "
                    "query's order is not deterministic)",
                    hint="give the query an ORDER BY on a unique key; the step must read anew",
                )
            while True:
                rows, last = await in_thread(read.next_batch, read.interrupt)
                accepted, rejected, newest = read.freshness(rows, seen)
                seen += len(rows)
                hash_rows(h, rows)
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
            try:
                await asyncio.to_thread(read.close)
            finally:
                slot.release()

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
        return final(
            f"source {self.name!r}: the database refused the query: {reason}",
            hint="the query passed the scope check but not the database: check the scope's "
            "table and column names against the database",
        )


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
    kwargs: dict[str, Any] = {
        "hide_parameters": True,
        "pool_pre_ping": True,
        "pool_size": config.max_connections,  # SqlSource._slot never asks for more
        "max_overflow": 0,
    }
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
