"""Schema migrations (Alembic), run programmatically.

Checking the schema (what every store does on opening) reads the version table with the
database's own driver; SQLAlchemy and Alembic are imported only to migrate.
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from typing import TYPE_CHECKING, Any

from codara.errors import DatabaseUnreachableError, SchemaOutOfDateError, StoreError
from codara.store._url import DatabaseURL, sqlite_parent_exists

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Engine

__all__ = [
    "HEAD_REVISION",
    "SchemaState",
    "check_schema",
    "head_revision",
    "schema_state",
    "upgrade",
]

VERSION_TABLE = "codara_alembic_version"
HEAD_REVISION = "0008"
"""The newest migration. Checking a schema needs only this, so Alembic is imported only to
migrate; a test pins it to Alembic's own head."""


def _alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    location = resources.files("codara.store") / "migrations"
    cfg.set_main_option("script_location", str(location))
    return cfg


def head_revision() -> str:
    """Alembic's head revision, read from the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _check_folder(url: DatabaseURL) -> None:
    if url.dialect == "sqlite" and url.sqlite_path and not sqlite_parent_exists(url.sqlite_path):
        raise DatabaseUnreachableError(
            f"cannot open the SQLite database {url.sqlite_path}: its folder does not exist",
            hint="create the folder or point CODARA_DATABASE_URL / [store] url elsewhere",
        )


def _engine(url: DatabaseURL) -> Engine:
    from sqlalchemy import create_engine

    _check_folder(url)
    kwargs: dict[str, Any] = {}
    if url.dialect == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 5}
    return create_engine(url.sqlalchemy_url, **kwargs)


def unreachable(url: DatabaseURL, exc: BaseException) -> DatabaseUnreachableError:
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else repr(exc)
    if url.password:
        reason = reason.replace(url.password, "***")
    hint = (
        "is PostgreSQL running and the URL right? check host, port, user and database name"
        if url.dialect == "postgresql"
        else "check the file path and its permissions"
    )
    return DatabaseUnreachableError(
        f"cannot connect to the database {url.redacted()}: {reason}", hint=hint
    )


class SchemaState:
    def __init__(self, current: str | None, head: str, has_tables: bool) -> None:
        self.current = current
        self.head = head
        self.has_tables = has_tables

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        if self.current is not None:
            return f"revision {self.current}"
        return "tables without a version record" if self.has_tables else "no Codara tables"

    @property
    def empty(self) -> bool:
        return self.current is None and not self.has_tables


_TABLES = (VERSION_TABLE, "codara_runs")
_SQLITE_TABLES = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name IN (?, ?)"
# The relations visible on the search path, of the kinds SQLAlchemy's has_table counts.
_PG_TABLES = (
    "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname = ANY(%s) "
    "AND c.relkind IN ('r', 'p', 'f', 'v', 'm') AND pg_catalog.pg_table_is_visible(c.oid)"
)
_VERSION = f"SELECT version_num FROM {VERSION_TABLE}"


def _sqlite_state(url: DatabaseURL) -> tuple[set[str], list[Any]]:
    _check_folder(url)
    assert url.sqlite_path is not None
    try:
        conn = sqlite3.connect(url.sqlite_path)
        try:
            tables = {row[0] for row in conn.execute(_SQLITE_TABLES, _TABLES)}
            versions = conn.execute(_VERSION).fetchall() if VERSION_TABLE in tables else []
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise unreachable(url, exc) from exc
    return tables, versions


def _postgres_state(url: DatabaseURL) -> tuple[set[str], list[Any]]:
    import psycopg

    assert url.pg_conninfo is not None
    try:
        with psycopg.connect(url.pg_conninfo, autocommit=True, connect_timeout=5) as conn:
            tables = {row[0] for row in conn.execute(_PG_TABLES, (list(_TABLES),))}
            versions = conn.execute(_VERSION).fetchall() if VERSION_TABLE in tables else []
    except psycopg.Error as exc:
        raise unreachable(url, exc) from exc
    return tables, versions


def schema_state(url: DatabaseURL) -> SchemaState:
    """The schema revision recorded in the database, read with its own driver."""
    read = _sqlite_state if url.dialect == "sqlite" else _postgres_state
    tables, versions = read(url)
    current = str(versions[0][0]) if len(versions) == 1 else None
    return SchemaState(current, HEAD_REVISION, "codara_runs" in tables)


def check_schema(url: DatabaseURL) -> SchemaState:
    """Raise :class:`SchemaOutOfDateError` unless the schema is at the head revision."""
    state = schema_state(url)
    if not state.up_to_date:
        have = state.describe()
        raise SchemaOutOfDateError(
            f"the database {url.redacted()} has schema {have}; this Codara needs revision "
            f"{state.head}",
            hint="run `codara db upgrade` (with the same CODARA_DATABASE_URL) and start again",
        )
    return state


def upgrade(url: DatabaseURL, revision: str = "head") -> SchemaState:
    """Bring the schema to ``revision``; safe to run again, and from several processes."""
    state = schema_state(url)  # raises DatabaseUnreachableError if it cannot connect
    if state.current is None and state.has_tables:
        raise StoreError(
            f"the database {url.redacted()} has Codara tables but no schema version record",
            hint="the codara_alembic_version table was emptied or dropped; restore it from a "
            "backup, or move the tables aside and run `codara db upgrade` on an empty database",
        )
    from alembic import command
    from alembic.util.exc import CommandError as AlembicCommandError
    from sqlalchemy.exc import SQLAlchemyError

    engine = _engine(url)
    cfg = _alembic_config()
    try:
        with engine.begin() as conn:
            if url.dialect == "postgresql":
                # One migrator at a time across machines.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7265436172)")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except AlembicCommandError as exc:
        raise StoreError(
            f"cannot upgrade the schema of {url.redacted()}: {exc}",
            hint="the database records a schema revision this Codara does not know: is it "
            "from a newer Codara? Upgrade Codara, or restore the database from a backup",
        ) from exc
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise StoreError(
            f"the schema upgrade of {url.redacted()} failed and was rolled back: {reason}",
            hint="nothing was changed; fix the cause above and run `codara db upgrade` again",
        ) from exc
    finally:
        engine.dispose()
    return schema_state(url)
