"""Databases for the SQL connector's tests: SQLite, PostgreSQL and MariaDB, each a fresh
database (a file, a ``CREATE DATABASE``) per test, dropped afterwards.

MariaDB: set CODARA_TEST_MARIADB_URL (default mysql+pymysql://root@127.0.0.1:3306/test).
As for PostgreSQL (tests/conftest.py), under CI (CI=true) a test that cannot reach it
fails; elsewhere it is skipped with one loud line saying how to enable it.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

MARIADB_ADMIN_URL = os.environ.get(
    "CODARA_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_mariadb_error: str | None = None
_mariadb_checked = False


def _mariadb_admin() -> sa.Engine:
    return sa.create_engine(
        MARIADB_ADMIN_URL,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
        poolclass=sa.pool.NullPool,
    )


def mariadb_available() -> str | None:
    """None if MariaDB answers, else the reason it does not."""
    global _mariadb_checked, _mariadb_error
    if not _mariadb_checked:
        _mariadb_checked = True
        admin = _mariadb_admin()
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.DBAPIError as exc:
            _mariadb_error = str(exc.orig) or repr(exc.orig)
        finally:
            admin.dispose()
    return _mariadb_error


def require_mariadb() -> None:
    reason = mariadb_available()
    if reason is None:
        return
    shown = sa.engine.make_url(MARIADB_ADMIN_URL).render_as_string(hide_password=True)
    message = (
        f"MariaDB unreachable at {shown} ({reason}). Start it or set "
        "CODARA_TEST_MARIADB_URL to enable the MariaDB tests"
    )
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    print(f"\n!!! SKIPPING: {message}", file=sys.stderr)
    pytest.skip(message)


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh, empty MariaDB database for one test, dropped afterwards."""
    require_mariadb()
    name = f"codara_t_{uuid.uuid4().hex[:12]}"
    admin = _mariadb_admin()
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        url = sa.engine.make_url(MARIADB_ADMIN_URL).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


@dataclass
class SqlDatabase:
    """A database a test fills through a writable connection of its own, then reads
    through a source (which is read-only)."""

    kind: str
    """``sqlite``, ``postgresql`` or ``mariadb``."""
    url: str
    admin: sa.Engine

    def run(self, *statements: str) -> None:
        with self.admin.begin() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql)

    def scalar(self, sql: str) -> object:
        with self.admin.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()


def _admin_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def sql_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlDatabase]:
    """The same connector test on SQLite (a WAL file), PostgreSQL and MariaDB."""
    kind = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/crm.db"
    elif kind == "postgresql":
        url = str(request.getfixturevalue("pg_url"))
    else:
        url = str(request.getfixturevalue("mariadb_url"))
    admin = sa.create_engine(_admin_url(url))
    if kind == "sqlite":
        with admin.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    try:
        yield SqlDatabase(kind, url, admin)
    finally:
        admin.dispose()
