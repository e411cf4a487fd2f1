"""Schema migrations and the refusal to work on an out-of-date schema."""

from __future__ import annotations

import sqlite3

import pytest

import codara
from codara.errors import ConfigError, DatabaseUnreachableError, SchemaOutOfDateError
from codara.store import head_revision, open_store, parse_url, schema_state, upgrade


async def test_upgrade_creates_the_schema_and_is_idempotent(db_url: str) -> None:
    url = parse_url(db_url)
    assert schema_state(url).empty
    assert upgrade(url).up_to_date
    assert upgrade(url).current == head_revision()


async def test_a_worker_refuses_an_empty_or_old_schema(db_url: str) -> None:
    with pytest.raises(SchemaOutOfDateError, match="codara db upgrade"):
        await open_store(db_url, migrate="check")
    upgrade(parse_url(db_url))
    store = await open_store(db_url, migrate="check")
    await store.close()


async def test_an_older_schema_is_never_upgraded_implicitly(sqlite_url: str) -> None:
    url = parse_url(sqlite_url)
    upgrade(url)
    assert url.sqlite_path is not None
    with sqlite3.connect(url.sqlite_path) as conn:
        conn.execute("UPDATE codara_alembic_version SET version_num = '0000'")
    with pytest.raises(SchemaOutOfDateError) as info:
        await open_store(sqlite_url, migrate="create-if-empty")
    assert "has schema revision 0000" in info.value.message
    assert "codara db upgrade" in str(info.value.hint)


async def test_unreachable_postgres_is_a_clear_error() -> None:
    with pytest.raises(DatabaseUnreachableError, match=r"127\.0\.0\.1:1") as info:
        await open_store("postgresql://postgres@127.0.0.1:1/test")
    assert "PostgreSQL running" in str(info.value.hint)


async def test_password_never_appears_in_errors() -> None:
    with pytest.raises(DatabaseUnreachableError) as info:
        await open_store("postgresql://admin:s3cret-pw@127.0.0.1:1/test")
    assert "s3cret-pw" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://root@localhost/db", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory"),
        ("not a url", "not a valid URL"),
    ],
)
def test_bad_database_urls(url: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_url(url)


async def test_sqlite_in_a_missing_folder(tmp_path: object) -> None:
    with pytest.raises(DatabaseUnreachableError, match="folder does not exist"):
        async with codara.App(f"sqlite:///{tmp_path}/nope/x.db"):
            pass


def test_the_pinned_head_is_alembics_head() -> None:
    from codara.store._migrate import HEAD_REVISION

    assert head_revision() == HEAD_REVISION
