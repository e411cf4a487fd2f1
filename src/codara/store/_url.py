"""Parse and check database URLs.

The URL is parsed here, with the grammar SQLAlchemy's ``make_url`` uses (a test pins the
two to the same result), so that opening a store does not import SQLAlchemy: it loads only
for migrations and the ``:name`` parameters of user SQL (docs/architecture.md, "Start-up").
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from codara.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["DatabaseURL", "URLParts", "parse_url"]

# sqlalchemy.engine.url._parse_url's pattern, unchanged.
_PATTERN = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
        """,
    re.X,
)


@dataclass(frozen=True)
class URLParts:
    """The components of a database URL, as SQLAlchemy's ``URL`` holds them."""

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Sorted by key; a key given several times keeps its values in order."""

    def render(self, drivername: str | None = None, *, hide_password: bool = True) -> str:
        """The URL as text, exactly as SQLAlchemy's ``URL.render_as_string`` writes it."""
        s = (drivername or self.drivername) + "://"
        if self.username is not None:
            s += quote(self.username, safe=" +")
            if self.password is not None:
                s += ":" + ("***" if hide_password else quote(self.password, safe=" +"))
            s += "@"
        if self.host is not None:
            s += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            s += ":" + str(self.port)
        if self.database is not None:
            s += "/" + quote(self.database, safe=" +/")
        if self.query:
            s += "?" + "&".join(
                f"{quote_plus(k)}={quote_plus(v)}" for k, values in self.query for v in values
            )
        return s


def _split(url: str) -> URLParts:
    m = _PATTERN.match(url)
    if m is None:
        raise ValueError("not a URL")
    c = m.groupdict()
    query: dict[str, list[str]] = {}
    if c["query"] is not None:
        for key, value in parse_qsl(c["query"]):
            query.setdefault(key, []).append(value)
    port = int(c["port"]) if c["port"] else None
    return URLParts(
        drivername=c["name"],
        username=None if c["username"] is None else unquote(c["username"]),
        password=None if c["password"] is None else unquote(c["password"]),
        host=c["ipv4host"] or c["ipv6host"],
        port=port,
        database=None if c["database"] is None else unquote(c["database"]),
        query=tuple((k, tuple(query[k])) for k in sorted(query)),
    )


@dataclass(frozen=True)
class DatabaseURL:
    dialect: Literal["sqlite", "postgresql"]
    parts: URLParts
    """The URL's components (driver ``sqlite`` or ``postgresql+psycopg``)."""
    sqlite_path: str | None = None
    pg_conninfo: str | None = None

    @property
    def password(self) -> str | None:
        return self.parts.password

    def redacted(self) -> str:
        """The URL with any password hidden, safe for logs and error messages."""
        return self.parts.render(self.dialect, hide_password=True)

    @functools.cached_property
    def sqlalchemy_url(self) -> URL:
        """The URL SQLAlchemy and Alembic use (imports SQLAlchemy: migrations only)."""
        from sqlalchemy.engine import URL

        p = self.parts
        return URL.create(
            p.drivername,
            username=p.username,
            password=p.password,
            host=p.host,
            port=p.port,
            database=p.database,
            query={k: v[0] if len(v) == 1 else v for k, v in p.query},
        )


def parse_url(url: str) -> DatabaseURL:
    try:
        parsed = _split(url)
    except ValueError as exc:
        raise ConfigError(
            f"the database URL {url.split('@')[-1]!r} is not a valid URL",
            hint="use sqlite:///path/to/codara.db or postgresql://user@host:5432/dbname",
        ) from exc
    backend = parsed.drivername.split("+")[0]
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ConfigError(
                "an in-memory SQLite database cannot be shared by workers",
                hint="give a file: sqlite:///codara.db",
            )
        return DatabaseURL("sqlite", replace(parsed, drivername="sqlite"), sqlite_path=database)
    if backend in ("postgresql", "postgres"):
        parts = replace(parsed, drivername="postgresql+psycopg")
        conninfo = parts.render("postgresql", hide_password=False)
        return DatabaseURL("postgresql", parts, pg_conninfo=conninfo)
    raise ConfigError(
        f"unsupported database {backend!r} in the database URL",
        hint="Codara stores its state in SQLite (sqlite:///codara.db) or PostgreSQL "
        "(postgresql://user@host/db)",
    )


def sqlite_parent_exists(path: str) -> bool:
    return Path(path).expanduser().resolve().parent.is_dir()
