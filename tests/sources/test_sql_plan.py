"""What the SQL source decides before a query reaches the database: the scope check's
verdict, the parameters, the configuration (on a SQLite file; no server needed)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from codara.errors import InputError, ScopeError
from codara.sources import JSON, Plan
from codara.sources._sql import ScopeCheck, SqlSource, SqlSourceConfig

TABLES = {"customers": ["id", "email"]}


def checker(params: Iterable[str] = (), touched: Iterable[str] = ("customers.id",)) -> ScopeCheck:
    """A scope checker stand-in that accepts the query and reports ``params`` as used."""

    def check(sql: str) -> tuple[Iterable[str], Iterable[str]]:
        return list(touched), set(params)

    return check


@pytest.fixture
def crm(tmp_path: Path) -> str:
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT)")
        conn.executemany("INSERT INTO customers VALUES (?, ?)", [(1, "a@x.test"), (2, "b@x.test")])
    conn.close()
    return f"sqlite:///{path}"


def make(url: str, check: ScopeCheck | None, **config: Any) -> SqlSource:
    return SqlSource("crm", SqlSourceConfig(url=url, tables=TABLES, **config), check=check)


async def rows(src: SqlSource, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [r async for b in src.batches(src.plan(sql, **params)) for r in b.rows]


def test_by_default_the_sqlglot_scope_check_decides(crm: str) -> None:
    src = make(crm, None)
    plan = src.plan("SELECT c.email FROM customers AS c WHERE c.id = :id", id=1)
    assert plan.touched == ("customers.email", "customers.id")
    with pytest.raises(ScopeError) as err:
        src.plan("SELECT id FROM orders")
    assert err.value.rule == "table"
    with pytest.raises(ScopeError, match="every column") as star:
        src.plan("SELECT * FROM customers")  # customers is not declared complete
    assert star.value.rule == "star"
    assert make(crm, None, complete_tables=("customers",)).plan("SELECT * FROM customers")
    src.engine.dispose()


def test_the_checkers_refusal_is_the_plans_refusal(crm: str) -> None:
    def refuse(sql: str) -> tuple[Iterable[str], Iterable[str]]:
        raise ScopeError("column customers.iban is outside the scope", rule="column")

    with pytest.raises(ScopeError, match="iban") as err:
        make(crm, refuse).plan("SELECT iban FROM customers")
    assert err.value.rule == "column"


def test_a_plan_says_what_it_reads_with_which_parameters(crm: str) -> None:
    src = make(crm, checker(["id"], ["customers.id", "customers.email"]))
    plan = src.plan("SELECT email FROM customers WHERE id = :id", id=2)
    assert (plan.source, plan.target, dict(plan.params), plan.touched) == (
        "crm",
        "SELECT email FROM customers WHERE id = :id",
        {"id": 2},
        ("customers.id", "customers.email"),
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "missing id"),
        ({"id": 1, "name": "x"}, "not used by the query: name"),
        ({"id": [1, 2]}, "'id' is a list"),
        ({"id": {"a": 1}}, "'id' is a dict"),
        ({"id": math.nan}, "'id' is a float"),
        ({"id": b"1"}, "'id' is a bytes"),
    ],
)
def test_parameters_must_match_the_query_and_be_json_scalars(
    crm: str, params: dict[str, Any], message: str
) -> None:
    src = make(crm, checker(["id"]))
    with pytest.raises(InputError, match=message):
        src.plan("SELECT email FROM customers WHERE id = :id", **params)


def test_a_parameter_the_checker_and_the_driver_see_differently_is_refused(crm: str) -> None:
    # A parser sees a string literal; SQLAlchemy's text() would bind :x inside it.
    with pytest.raises(ScopeError, match="ambiguous") as err:
        make(crm, checker([])).plan("SELECT id FROM customers WHERE email = 'note :x'")
    assert err.value.rule == "params"


async def test_values_are_bound_never_spliced_into_the_query(crm: str) -> None:
    src = make(crm, checker(["email"]))
    sql = "SELECT id FROM customers WHERE email = :email"
    assert await rows(src, sql, email="a@x.test' OR '1'='1") == []
    assert await rows(src, sql, email="a@x.test") == [{"id": 1}]
    await src.close()


async def test_a_cursor_the_source_did_not_give_is_refused(crm: str) -> None:
    src = make(crm, checker())
    plan = src.plan("SELECT id FROM customers")
    bad_cursors: list[JSON] = [7, {"rows": -1, "digest": "x"}, {"rows": True, "digest": "x"}, "10"]
    for bad in bad_cursors:
        with pytest.raises(InputError, match="not a cursor"):
            await anext(src.batches(plan, bad))
    await src.close()


@pytest.mark.timeout(30)
async def test_cancelling_a_read_interrupts_its_query_and_frees_the_connection(crm: str) -> None:
    src = make(crm, checker(), statement_timeout=3600)
    slow = src.plan(
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT max(n) AS id FROM c"
    )
    task = asyncio.ensure_future(anext(src.batches(slow)))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await rows(src, "SELECT id FROM customers ORDER BY id") == [{"id": 1}, {"id": 2}]
    await src.close()


# -- configuration -----------------------------------------------------------------------------
def test_the_url_is_never_shown_by_the_config() -> None:
    config = SqlSourceConfig(url="postgresql://u:hunter2-canary@db/crm", tables=TABLES)
    assert "hunter2-canary" not in repr(config) + str(config) + config.model_dump_json()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"url": "postgresql://u:hunter2-canary@db/crm", "url_env": "CRM_URL"}, "exactly one"),
        ({}, "exactly one"),
        ({"url_env": "not a name"}, "should match pattern"),
        ({"url_env": "U", "tables": {"customers": []}}, "lists no column"),
        ({"url_env": "U", "timestamp_column": "customers.updated_at"}, "TABLE.COLUMN"),
        ({"url_env": "U", "timestamp_column": "orders.id"}, "TABLE.COLUMN"),
        ({"url_env": "U", "row_limit": 0}, "greater than or equal to 1"),
        ({"url_env": "U", "statement_timeout": 0}, "greater than 0"),
        ({"url_env": "U", "max_connections": 0}, "greater than or equal to 1"),
        ({"url_env": "U", "max_connections": 1001}, "less than or equal to 1000"),
        ({"url_env": "U", "max_connections": "five"}, "valid integer"),
    ],
)
def test_a_bad_config_is_refused_without_showing_the_url(
    config: dict[str, Any], message: str
) -> None:
    config.setdefault("tables", TABLES)
    with pytest.raises(ValidationError, match=message) as err:
        SqlSourceConfig(**config)
    shown = str(err.value) + repr(err.value.errors())
    assert "hunter2-canary" not in shown


async def test_a_sqlite_uri_is_opened_read_only_too(crm: str) -> None:
    path = crm.removeprefix("sqlite:///")
    src = make(f"sqlite:///file:{path}?uri=true&mode=rw", checker())
    await src.check()
    with pytest.raises(ScopeError, match="refused a write"):
        await anext(src.batches(Plan("crm", "DELETE FROM customers")))
    assert await rows(src, "SELECT id FROM customers ORDER BY id") == [{"id": 1}, {"id": 2}]
    await src.close()
