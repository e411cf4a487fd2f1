"""The SQL connector against real SQLite, PostgreSQL and MariaDB databases: values come
back as JSON, reads stream in batches and resume exactly, and the database itself refuses
writes, long statements and oversized results."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from codara.errors import ConfigError, InputError, ScopeError, SourceError
from codara.sources import Batch, Plan
from codara.sources._sql import ScopeCheck, SqlSource, SqlSourceConfig

if TYPE_CHECKING:
    from conftest import SqlDatabase  # tests/sources/conftest.py


def allow(tables: Mapping[str, Sequence[str]]) -> ScopeCheck:
    """A stand-in for the real scope checker that accepts every query and reports every
    declared column as touched: these tests are about what the database does after it."""

    def check(sql: str) -> tuple[Iterable[str], Iterable[str]]:
        touched = [f"{t}.{c}" for t, cols in tables.items() for c in cols]
        return touched, set(re.findall(r"(?<![:\w]):(\w+)", sql))

    return check


_opened: list[SqlSource] = []


@pytest.fixture(autouse=True)
def _dispose_sources() -> Iterator[None]:
    """Every source a test opened is closed after it, passed or failed (an engine left to
    the garbage collector warns, and warnings are errors)."""
    yield
    while _opened:
        _opened.pop().engine.dispose()


def opened(src: SqlSource) -> SqlSource:
    _opened.append(src)
    return src


def source(db: SqlDatabase, **config: Any) -> SqlSource:
    config.setdefault("tables", {"items": ["id", "name"]})
    return opened(
        SqlSource(
            f"crm_{db.kind}",
            SqlSourceConfig(url=db.url, **config),
            check=allow(config["tables"]),
        )
    )


async def read_all(src: SqlSource, plan: Plan, cursor: Any = None) -> list[Batch]:
    return [b async for b in src.batches(plan, cursor)]


def fill_items(db: SqlDatabase, n: int) -> None:
    db.run("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(50))")
    values = ", ".join(f"({i}, 'item {i}')" for i in range(1, n + 1))
    db.run(f"INSERT INTO items (id, name) VALUES {values}")


# -- values ------------------------------------------------------------------------------------
TYPES = {
    "sqlite": (
        "CREATE TABLE kinds (id INTEGER PRIMARY KEY, day TEXT, at TEXT, amount DECIMAL(12,2), "
        "note TEXT, payload BLOB, missing TEXT)",
        "INSERT INTO kinds VALUES (1, '2026-12-02', '2026-12-02T05:10:00+00:00', '1234.50', "
        "'Zoë 🚀 Ω', X'00FF', NULL)",
    ),
    "postgresql": (
        "CREATE TABLE kinds (id INTEGER PRIMARY KEY, day DATE, at TIMESTAMPTZ, "
        "amount NUMERIC(12,2), note TEXT, payload BYTEA, missing TEXT)",
        "INSERT INTO kinds VALUES (1, '2026-12-02', '2026-12-02 05:10:00+00', 1234.50, "
        "'Zoë 🚀 Ω', '\\x00ff'::bytea, NULL)",
    ),
    "mariadb": (
        "CREATE TABLE kinds (id INTEGER PRIMARY KEY, day DATE, at DATETIME, "
        "amount DECIMAL(12,2), note TEXT, payload BLOB, missing TEXT) CHARACTER SET utf8mb4",
        "INSERT INTO kinds VALUES (1, '2026-12-02', '2026-12-02 05:10:00', 1234.50, "
        "'Zoë 🚀 Ω', X'00FF', NULL)",
    ),
}


async def test_values_come_back_as_json_the_journal_can_replay(sql_db: SqlDatabase) -> None:
    sql_db.run(*TYPES[sql_db.kind])
    columns = ["id", "day", "at", "amount", "note", "payload", "missing"]
    src = source(sql_db, tables={"kinds": columns}, timestamp_column="kinds.at")
    plan = src.plan(
        "SELECT id, day, at, amount, note, payload, missing FROM kinds WHERE id = :id", id=1
    )
    [batch] = await read_all(src, plan)
    at = {
        "sqlite": "2026-12-02T05:10:00+00:00",
        "postgresql": "2026-12-02T05:10:00+00:00",
        "mariadb": "2026-12-02T05:10:00",  # DATETIME has no zone: read as UTC
    }[sql_db.kind]
    amount = 1234.5 if sql_db.kind == "sqlite" else "1234.50"  # SQLite has no decimals
    assert batch.rows == [
        {
            "id": 1,
            "day": "2026-12-02",
            "at": at,
            "amount": amount,
            "note": "Zoë 🚀 Ω",
            "payload": "AP8=",
            "missing": None,
        }
    ]
    assert batch.newest == dt.datetime(2026, 12, 2, 5, 10, tzinfo=dt.UTC).timestamp()
    assert batch.cursor is None
    assert (batch.version or "").startswith("pg-lsn:") == (sql_db.kind == "postgresql")


# -- batches and resume ------------------------------------------------------------------------
async def test_a_read_streams_in_batches_and_resumes_from_every_cursor(
    sql_db: SqlDatabase,
) -> None:
    fill_items(sql_db, 25)
    src = source(sql_db, batch_rows=10)
    plan = src.plan("SELECT id, name FROM items WHERE id <= :upto ORDER BY id", upto=100)
    batches = await read_all(src, plan)
    assert [len(b.rows) for b in batches] == [10, 10, 5]
    assert [r["id"] for b in batches for r in b.rows] == list(range(1, 26))
    assert batches[-1].cursor is None
    assert all(b.cursor is not None for b in batches[:-1])
    for i, batch in enumerate(batches[:-1]):
        fresh = source(sql_db, batch_rows=10)  # a new process after a crash
        rest = await read_all(fresh, plan, batch.cursor)
        assert [r for b in rest for r in b.rows] == [r for b in batches[i + 1 :] for r in b.rows]


async def test_a_resume_over_changed_data_stops_instead_of_skipping_the_wrong_rows(
    sql_db: SqlDatabase,
) -> None:
    fill_items(sql_db, 25)
    src = source(sql_db, batch_rows=10)
    plan = src.plan("SELECT id, name FROM items ORDER BY id")
    stream = src.batches(plan)
    first = await anext(stream)
    await stream.aclose()  # the worker died here
    sql_db.run("DELETE FROM items WHERE id = 3")
    with pytest.raises(SourceError, match="cannot resume the read after 10 rows") as err:
        await read_all(src, plan, first.cursor)
    assert err.value.non_retryable


async def test_an_empty_result_is_one_empty_last_batch(sql_db: SqlDatabase) -> None:
    fill_items(sql_db, 3)
    src = source(sql_db)
    assert [
        (b.rows, b.cursor)
        for b in await read_all(src, src.plan("SELECT id FROM items WHERE id > :n", n=99))
    ] == [([], None)]


async def test_two_result_columns_of_one_name_are_refused_rather_than_one_lost(
    sql_db: SqlDatabase,
) -> None:
    fill_items(sql_db, 1)
    src = source(sql_db)
    with pytest.raises(InputError, match="more than one column named id"):
        await read_all(src, src.plan("SELECT a.id, b.id FROM items a JOIN items b ON a.id = b.id"))
    sql = "SELECT a.id, b.id AS other_id FROM items a JOIN items b ON a.id = b.id"
    assert (await read_all(src, src.plan(sql)))[0].rows == [{"id": 1, "other_id": 1}]


# -- limits ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("row_limit", "delivered"), [(25, 25), (20, 10), (15, 10), (5, 0)])
async def test_a_result_over_row_limit_fails_before_a_row_past_the_limit_is_delivered(
    sql_db: SqlDatabase, row_limit: int, delivered: int
) -> None:
    fill_items(sql_db, 25)
    src = source(sql_db, batch_rows=10, row_limit=row_limit)
    got: list[Any] = []
    plan = src.plan("SELECT id FROM items ORDER BY id")
    if delivered == 25:
        got = [r for b in await read_all(src, plan) for r in b.rows]
    else:
        stream = src.batches(plan)
        got = [r for _ in range(delivered // 10) for r in (await anext(stream)).rows]
        with pytest.raises(SourceError, match=f"returned more than {row_limit} rows") as err:
            await anext(stream)
        assert err.value.non_retryable
        await stream.aclose()
    assert len(got) == delivered
    # The source is still usable after a refused read.
    assert len((await read_all(source(sql_db), src.plan("SELECT id FROM items")))[0].rows) == 25


SLOW = {
    "sqlite": "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) "
    "SELECT max(n) AS x FROM c",
    "postgresql": "SELECT pg_sleep(60) AS x",
    "mariadb": "SELECT SLEEP(60) AS x",
}


async def test_a_query_running_past_statement_timeout_is_stopped(sql_db: SqlDatabase) -> None:
    fill_items(sql_db, 1)
    src = source(sql_db, statement_timeout=0.5)
    with pytest.raises(SourceError, match=r"exceeded statement_timeout \(0.5 s\)"):
        await read_all(src, src.plan(SLOW[sql_db.kind]))
    # The connection it ran on is fine for the next read.
    [batch] = await read_all(src, src.plan("SELECT id FROM items"))
    assert batch.rows == [{"id": 1}]


async def test_a_write_that_got_past_the_scope_check_is_refused_by_the_database(
    sql_db: SqlDatabase,
) -> None:
    fill_items(sql_db, 2)
    writes = [
        "INSERT INTO items (id, name) VALUES (99, 'written')",
        "UPDATE items SET name = 'changed'",
        "DELETE FROM items",
        "DROP TABLE items",
        "CREATE TABLE stolen (id INTEGER)",
    ]
    if sql_db.kind == "postgresql":
        # PostgreSQL streams through DECLARE CURSOR, which takes no INSERT at all (a syntax
        # error); writes that read-only mode must stop hide in functions a SELECT calls.
        sql_db.run(
            "CREATE SEQUENCE ids",
            "CREATE FUNCTION sneaky() RETURNS integer LANGUAGE sql AS "
            "$$ INSERT INTO items (id, name) VALUES (99, 'written') RETURNING 1 $$",
        )
        refused_anyway = writes
        writes = ["SELECT sneaky() AS x", "SELECT nextval('ids') AS x"]
        src = source(sql_db)
        for sql in refused_anyway:
            with pytest.raises(SourceError, match="refused the query"):
                await read_all(src, Plan(src.name, sql))
    src = source(sql_db)
    for sql in writes:
        # Straight to batches, as if the checker had been bypassed.
        with pytest.raises(ScopeError, match="refused a write") as err:
            await read_all(src, Plan(src.name, sql))
        assert err.value.rule == "write"
    assert sql_db.scalar("SELECT count(*) FROM items") == 2
    assert sql_db.scalar("SELECT count(*) FROM items WHERE name = 'changed'") == 0
    sql_db.run("CREATE TABLE stolen (id INTEGER)")  # it was not created by the source


@pytest.mark.timeout(30)
async def test_cancelling_a_read_cancels_its_query_on_postgresql(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        admin.execute("INSERT INTO items VALUES (1, 'item 1')")
    config = SqlSourceConfig(url=pg_url, tables={"items": ["id"]}, statement_timeout=3600)
    src = opened(SqlSource("crm", config, check=allow(config.tables)))
    task = asyncio.ensure_future(anext(src.batches(src.plan(SLOW["postgresql"]))))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await read_all(src, src.plan("SELECT id FROM items")))[0].rows == [{"id": 1}]


async def test_the_postgresql_version_is_later_after_a_write(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        config = SqlSourceConfig(url=pg_url, tables={"items": ["id"]})
        src = opened(SqlSource("crm", config, check=allow(config.tables)))
        plan = src.plan("SELECT id FROM items")
        before = lsn((await read_all(src, plan))[0].version)
        admin.execute("INSERT INTO items VALUES (1, 'new')")
        # Cluster-wide (other tests write too), so only "later after a write" is certain.
        assert lsn((await read_all(src, plan))[0].version) > before


def lsn(version: str | None) -> int:
    assert version is not None
    high, low = version.removeprefix("pg-lsn:").split("/")
    return (int(high, 16) << 32) + int(low, 16)


# -- freshness ---------------------------------------------------------------------------------
async def test_newest_is_the_latest_timestamp_read_and_unreadable_ones_are_quarantined(
    sql_db: SqlDatabase,
) -> None:
    sql_db.run(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, updated_at VARCHAR(40))",
        "INSERT INTO customers VALUES (1, '2026-11-30T10:00:00+00:00'), "
        "(2, '2026-12-01 08:00:00'), (3, 'last tuesday'), (4, NULL)",
    )
    tables = {"customers": ["id", "updated_at"]}
    src = source(sql_db, tables=tables, timestamp_column="customers.updated_at")
    [batch] = await read_all(src, src.plan("SELECT id, updated_at FROM customers ORDER BY id"))
    assert [r["id"] for r in batch.rows] == [1, 2, 4]
    assert batch.newest == dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC).timestamp()
    [bad] = batch.rejected
    assert (bad.rule, bad.where, bad.raw) == (
        "timestamp",
        "row 3",
        {"id": 3, "updated_at": "last tuesday"},
    )
    # With a freshness limit, a query that does not select the column cannot be judged.
    strict = source(sql_db, tables=tables, timestamp_column="customers.updated_at", max_age=60)
    with pytest.raises(InputError, match="does not select"):
        await read_all(strict, strict.plan("SELECT id FROM customers"))


# -- load-time checks --------------------------------------------------------------------------
async def test_check_accepts_a_scope_the_database_has(sql_db: SqlDatabase) -> None:
    fill_items(sql_db, 1)
    src = source(sql_db, tables={"items": ["ID", "name"]})
    await src.check()


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"items": ["id", "colour"]}, "table 'items' has no column colour"),
        ({"orders": ["id"]}, "table 'orders' cannot be read"),
    ],
)
async def test_check_refuses_a_scope_the_database_does_not_have(
    sql_db: SqlDatabase, tables: dict[str, list[str]], message: str
) -> None:
    fill_items(sql_db, 1)
    src = source(sql_db, tables=tables)
    with pytest.raises(ConfigError, match=message):
        await src.check()


async def test_the_url_can_come_from_an_environment_variable(sql_db: SqlDatabase) -> None:
    fill_items(sql_db, 1)
    config = SqlSourceConfig(url_env="CRM_URL", tables={"items": ["id"]})
    src = opened(
        SqlSource("crm", config, check=allow(config.tables), environ={"CRM_URL": sql_db.url})
    )
    await src.check()
    assert (await read_all(src, src.plan("SELECT id FROM items")))[0].rows == [{"id": 1}]


def _config(url: str) -> SqlSourceConfig:
    return SqlSourceConfig(url=url, tables={"items": ["id"]})


async def test_an_unreachable_server_fails_check_with_the_url_and_a_hint() -> None:
    for url in ("postgresql://postgres@127.0.0.1:1/test", "mariadb://root@127.0.0.1:1/test"):
        src = opened(SqlSource("crm", _config(url), check=allow({})))
        with pytest.raises(SourceError, match="cannot reach") as err:
            await src.check()
        assert "127.0.0.1:1" in err.value.message
        assert "running" in str(err.value.hint)


async def test_a_wrong_password_fails_check_without_showing_the_password(
    mariadb_url: str,
) -> None:
    url = "mariadb://codara_nobody:canary-pw-7731@127.0.0.1:3306/test"
    src = opened(SqlSource("crm", _config(url), check=allow({})))
    with pytest.raises(ConfigError, match="refused the connection") as err:
        await src.check()
    shown = str(err.value) + repr(err.value) + repr(src) + src.redacted_url + repr(src.config)
    assert "canary-pw-7731" not in shown
    assert "codara_nobody:***@127.0.0.1" in str(err.value)


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
async def test_an_unknown_database_fails_check(kind: str, request: pytest.FixtureRequest) -> None:
    url = str(request.getfixturevalue("pg_url" if kind == "postgresql" else "mariadb_url"))
    missing = url.rpartition("/")[0] + "/codara_no_such_db"
    src = opened(SqlSource("crm", _config(missing), check=allow({})))
    with pytest.raises(ConfigError, match="codara_no_such_db"):
        await src.check()


async def test_a_missing_sqlite_file_fails_check_and_is_not_created(tmp_path: Any) -> None:
    path = tmp_path / "absent.db"
    src = opened(SqlSource("crm", _config(f"sqlite:///{path}"), check=allow({})))
    with pytest.raises(ConfigError, match="refused the connection"):
        await src.check()
    assert not path.exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "url is not a database URL"),
        ("oracle+nosuchdriver://u:pw@h/db", "no SQLAlchemy driver for 'oracle"),
        ("sqlite://", "in-memory SQLite"),
    ],
)
def test_a_bad_url_stops_at_load(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        SqlSource("crm", _config(url), check=allow({}))
    assert ":pw@" not in str(err.value)


def test_a_missing_environment_variable_stops_at_load() -> None:
    config = SqlSourceConfig(url_env="CODARA_TEST_NO_SUCH_URL", tables={"items": ["id"]})
    with pytest.raises(ConfigError, match="CODARA_TEST_NO_SUCH_URL is not set"):
        SqlSource("crm", config, environ={})
