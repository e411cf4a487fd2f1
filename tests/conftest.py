"""Shared fixtures: the parametrized store URL (SQLite and PostgreSQL) and helpers.

PostgreSQL: set CODARA_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test).
Under CI (CI=true) a test that cannot reach it fails; elsewhere it is skipped with one loud
line saying how to enable it.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

PG_ADMIN_URL = os.environ.get(
    "CODARA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_pg_error: str | None = None
_pg_checked = False


def postgres_available() -> str | None:
    """None if PostgreSQL answers, else the reason it does not."""
    global _pg_checked, _pg_error
    if not _pg_checked:
        _pg_checked = True
        try:
            with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            _pg_error = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
    return _pg_error


def require_postgres() -> None:
    reason = postgres_available()
    if reason is None:
        return
    message = (
        f"PostgreSQL unreachable at {PG_ADMIN_URL} ({reason}). Start it (`make pg-start`) or "
        "set CODARA_TEST_POSTGRES_URL to enable the PostgreSQL tests"
    )
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    print(f"\n!!! SKIPPING: {message}", file=sys.stderr)
    pytest.skip(message)


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    require_postgres()
    name = f"codara_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(PG_ADMIN_URL, name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/codara.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))
