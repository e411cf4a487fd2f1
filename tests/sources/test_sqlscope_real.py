"""The scope check against real servers (SQLite, PostgreSQL): every query it allows runs
there, and the queries it refuses for reading differently from how sqlglot reads them
really do read an unlisted column on the server.

The tables have columns the scope does not list (``iban``; ``status`` on customers, a
name ``orders`` also has), as real tables do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from tests.sources.test_sqlscope import ALLOWED, scope_for

from codara.sources._sqlscope import check_sql

SCHEMA = {
    "sqlite": [
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT,"
        " created_at TEXT, iban TEXT, status TEXT)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount INTEGER,"
        " status TEXT)",
    ],
    "postgres": [
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT,"
        " created_at TIMESTAMP, iban TEXT, status TEXT)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount INTEGER,"
        " status TEXT)",
    ],
}
ROWS = [
    "INSERT INTO customers VALUES (1, 'Ann', 'ann@example.org', '2026-01-02 03:04:05',"
    " 'DE89370400440532013000', 'flagged')",
    "INSERT INTO customers VALUES (2, 'Bob', NULL, '2026-02-03 04:05:06',"
    " 'FR7630006000011234567890189', 'ok')",
    "INSERT INTO orders VALUES (1, 1, 120, 'open'), (2, 2, 5, 'paid')",
]
PARAMS = {
    "customer_id": 1,
    "status": "open",
    "min": 10,
    "pattern": "A%",
    "since": dt.datetime(2026, 1, 1),
    "id": 1,
    "n": 5,
}


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, sa.Engine]]:
    dialect = request.param
    if dialect == "sqlite":
        url = str(request.getfixturevalue("sqlite_url"))
    else:
        url = str(request.getfixturevalue("pg_url")).replace(
            "postgresql://", "postgresql+psycopg://"
        )
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in SCHEMA[dialect] + ROWS:
            conn.execute(sa.text(statement))
    try:
        yield dialect, engine
    finally:
        engine.dispose()


def test_every_allowed_query_of_the_corpus_runs_on_the_server(
    server: tuple[str, sa.Engine],
) -> None:
    dialect, engine = server
    failures = []
    for sql in ALLOWED[dialect]:
        verdict = check_sql(sql, scope_for(dialect))
        assert verdict.allowed, f"{sql}: {verdict.reason}"
        params = {name: PARAMS[name] for name in verdict.params}
        with engine.connect() as conn:
            try:
                conn.execute(sa.text(sql), params).fetchall()
            except sa.exc.DBAPIError as error:
                failures.append(f"{sql}: {str(error.orig).splitlines()[0]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("sql", "reads"),
    [
        # sqlglot takes `iban` for the select alias; every server here reads the column
        # (SQLite prefers a real column over an alias, PostgreSQL never sees aliases there)
        ("SELECT name AS iban FROM customers WHERE iban LIKE 'DE%'", [("Ann",)]),
        # sqlglot resolves bare `status` to orders (the scope lists no customers.status);
        # the server resolves it to the inner table first: customers.status
        (
            "SELECT o.id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c"
            " WHERE c.id = o.customer_id AND status = 'flagged')",
            [(1,)],
        ),
    ],
)
def test_a_refused_ambiguity_really_reads_an_unlisted_column_on_the_server(
    server: tuple[str, sa.Engine], sql: str, reads: list[tuple[object, ...]]
) -> None:
    dialect, engine = server
    verdict = check_sql(sql, scope_for(dialect))
    assert (verdict.allowed, verdict.rule) == (False, "column")
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(sa.text(sql)).fetchall()] == reads


def test_star_over_a_table_with_unlisted_columns_would_read_them(
    server: tuple[str, sa.Engine],
) -> None:
    dialect, engine = server
    verdict = check_sql("SELECT * FROM customers", scope_for(dialect))
    assert verdict.rule == "star"
    with engine.connect() as conn:
        names = list(conn.execute(sa.text("SELECT * FROM customers")).keys())
    assert "iban" in names  # what the refusal protects


def test_a_bare_name_an_unlisted_column_shares_makes_the_server_refuse_not_read_it(
    server: tuple[str, sa.Engine],
) -> None:
    """The check allows a bare name it resolves to a subquery's column; where a table of
    the same query also has an unlisted column of that name, the server calls the name
    ambiguous and reads nothing (it never silently picks the unlisted column)."""
    dialect, engine = server
    sql = "SELECT iban FROM (SELECT name AS iban FROM customers) x JOIN customers c ON 1 = 1"
    verdict = check_sql(sql, scope_for(dialect))
    assert verdict.allowed
    assert verdict.columns == ("customers.name",)
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError, match=r"(?i)ambiguous"):
        conn.execute(sa.text(sql)).fetchall()
