"""Schema migrations (Alembic), run programmatically."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from codara.errors import DatabaseUnreachableError, SchemaOutOfDateError, StoreError
from codara.store._url import DatabaseURL, sqlite_parent_exists

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "HEAD_REVISION",
    "SchemaState",
    "check_schema",
    "head_revision",
    "schema_state",
    "upgrade",
]

VERSION_TABLE = "codara_alembic_version"
HEAD_REVISION = "0003"
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


def _engine(url: DatabaseURL) -> Engine:
    if url.dialect == "sqlite" and url.sqlite_path and not sqlite_parent_exists(url.sqlite_path):
        raise DatabaseUnreachableError(
            f"cannot open the SQLite database {url.sqlite_path}: its folder does not exist",
            hint="create the folder or point CODARA_DATABASE_URL / [store] url elsewhere",
        )
    kwargs: dict[str, Any] = {}
    if url.dialect == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 5}
    return create_engine(url.sqlalchemy_url, **kwargs)


def unreachable(url: DatabaseURL, exc: BaseException) -> DatabaseUnreachableError:
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else repr(exc)
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


def schema_state(url: DatabaseURL) -> SchemaState:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            tables = inspect(conn)
            current = None
            if tables.has_table(VERSION_TABLE):
                rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
                current = rows[0][0] if len(rows) == 1 else None
            has_tables = tables.has_table("codara_runs")
    except (OperationalError, SQLAlchemyError) as exc:
        raise unreachable(url, exc) from exc
    finally:
        engine.dispose()
    return SchemaState(current, HEAD_REVISION, has_tables)


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
