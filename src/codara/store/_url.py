"""Parse and check database URLs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from codara.errors import ConfigError

__all__ = ["DatabaseURL", "parse_url"]


@dataclass(frozen=True)
class DatabaseURL:
    dialect: Literal["sqlite", "postgresql"]
    sqlalchemy_url: URL
    """The URL SQLAlchemy and Alembic use (driver psycopg for PostgreSQL)."""
    sqlite_path: str | None = None
    pg_conninfo: str | None = None

    def redacted(self) -> str:
        """The URL with any password hidden, safe for logs and error messages."""
        return self.sqlalchemy_url.set(drivername=self.dialect).render_as_string(hide_password=True)


def parse_url(url: str) -> DatabaseURL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            f"the database URL {url.split('@')[-1]!r} is not a valid URL",
            hint="use sqlite:///path/to/codara.db or postgresql://user@host:5432/dbname",
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ConfigError(
                "an in-memory SQLite database cannot be shared by workers",
                hint="give a file: sqlite:///codara.db",
            )
        return DatabaseURL("sqlite", parsed.set(drivername="sqlite"), sqlite_path=database)
    if backend in ("postgresql", "postgres"):
        sa_url = parsed.set(drivername="postgresql+psycopg")
        conninfo = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
        return DatabaseURL("postgresql", sa_url, pg_conninfo=conninfo)
    raise ConfigError(
        f"unsupported database {backend!r} in the database URL",
        hint="Codara stores its state in SQLite (sqlite:///codara.db) or PostgreSQL "
        "(postgresql://user@host/db)",
    )


def sqlite_parent_exists(path: str) -> bool:
    return Path(path).expanduser().resolve().parent.is_dir()
