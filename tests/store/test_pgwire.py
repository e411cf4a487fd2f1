"""The libpq path of PostgreSQL's hot statements (store/_pgwire.py) says what psycopg said.

Parameters encoded by Codara itself (text, arrays, JSON groups) must reach the server as the
same values psycopg would have sent, errors must be psycopg's own classes with their
diagnostics, and a connection left mid-statement must not be lent again.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

import codara
from codara.store import JournalRecord
from codara.store._group import Finish, Write
from codara.store._pgwire import Prepared
from codara.store._sql import SQLStore
from codara.trace import verify_chain

AWKWARD = [
    "",
    "plain",
    'a "quoted" word',
    "back\\slash and \\\\ two",
    "{braces}, commas, and NULL",
    "NULL",
    "new\nline\ttab",
    "ünïcødé ✓ 😀",
    "'single' quotes; -- not a comment",
]
FLOATS = [0.1, 1 / 3, 1e-300, 1.7976931348623157e308, 1764650000.123456, -0.0, 5e-324]


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[psycopg.AsyncConnection[object]]:
    c = await psycopg.AsyncConnection.connect(pg_url, autocommit=True, client_encoding="UTF8")
    try:
        yield c
    finally:
        await c.close()


async def test_text_parameters_reach_the_server_unchanged(
    conn: psycopg.AsyncConnection[object],
) -> None:
    echo = Prepared("t_echo", "SELECT $1, $2::text, $3::text", ("text", "float8", "int4"))
    for text in AWKWARD:
        for number in FLOATS:
            rows = await echo.fetch(conn, (text, number, -7))
            assert rows == [(text, rows[0][1], "-7")]
            assert float(rows[0][1] or "nan") == number  # the very same double
            assert math.copysign(1.0, float(rows[0][1] or "nan")) == math.copysign(1.0, number)
    assert await echo.fetch(conn, (None, None, None)) == [(None, None, None)]


async def test_arrays_keep_every_element_and_null(conn: psycopg.AsyncConnection[object]) -> None:
    texts = Prepared(
        "t_texts", "SELECT t FROM unnest($1) WITH ORDINALITY u(t, i) ORDER BY i", ("text[]",)
    )
    values = [*AWKWARD, None]
    assert [r[0] for r in await texts.fetch(conn, (values,))] == values
    floats = Prepared("t_floats", "SELECT unnest($1)::text", ("float8[]",))
    assert [float(r[0] or "nan") for r in await floats.fetch(conn, (FLOATS,))] == FLOATS


async def test_a_server_error_is_psycopgs_own_with_its_diagnostics(
    conn: psycopg.AsyncConnection[object],
) -> None:
    await conn.execute("CREATE TABLE t_keys (k text CONSTRAINT pk_t_keys PRIMARY KEY)")
    insert = Prepared("t_insert", "INSERT INTO t_keys VALUES ($1)", ("text",))
    assert await insert.execute(conn, ("a",)) == 1
    with pytest.raises(pg_errors.UniqueViolation) as caught:
        await insert.execute(conn, ("a",))
    assert caught.value.diag.constraint_name == "pk_t_keys"
    assert conn.pgconn.transaction_status == TransactionStatus.IDLE  # usable again
    assert await insert.execute(conn, ("b",)) == 1


async def test_a_statement_deallocated_behind_its_back_is_prepared_again(
    conn: psycopg.AsyncConnection[object],
) -> None:
    one = Prepared("t_one", "SELECT $1::int4 + 1", ("int4",))
    assert await one.fetch(conn, (1,)) == [("2",)]
    await conn.execute("DEALLOCATE ALL")
    assert await one.fetch(conn, (2,)) == [("3",)]


async def test_a_call_cancelled_mid_wait_leaves_its_connection_not_idle(
    conn: psycopg.AsyncConnection[object],
) -> None:
    """The pool discards a connection that is not idle when handed back (_pgpool.release):
    a cancelled call must leave that sign, never a connection that looks reusable."""
    sleep = Prepared("t_sleep", "SELECT pg_sleep($1)", ("float8",))
    call = asyncio.ensure_future(sleep.fetch(conn, (5.0,)))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert conn.pgconn.transaction_status != TransactionStatus.IDLE


async def test_grouped_rows_with_awkward_text_read_back_and_verify(pg_url: str) -> None:
    """Rows of many runs written as one JSON document (the group commit) come back exactly,
    and every chain verifies."""
    url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    app = codara.App(url)

    @app.workflow(name="echo", version="1")
    async def echo(ctx: object, texts: list[str]) -> list[str]:
        out = []
        for i, text in enumerate(texts):
            out.append(await ctx.step(f"s{i}", lambda t: t, text))  # type: ignore[attr-defined]
        return out

    async with app:
        store = app.store
        assert isinstance(store, SQLStore)
        ids = await app.start_runs("echo", [AWKWARD] * 16)
        assert await app.work(concurrency=16, until_idle=True) == 16
        assert max(store.group_sizes) > 1  # rows did share commits
        for run_id in ids:
            run = await app.get_run(run_id)
            assert run.status == "completed"
            assert json.loads(run.output or "null") == AWKWARD
            rows: list[JournalRecord] = await store.journal(run_id)
            assert [json.loads(r.output or "null") for r in rows[:-1]] == AWKWARD
        report = await verify_chain(store)
        assert report.ok, report.problems


async def test_a_refused_group_with_finishes_commits_nothing_and_leaves_the_pool_usable(
    pg_url: str,
) -> None:
    """A group whose pipelined transaction fails (a taken seq) is rolled back whole: no
    finish of it lands, and the connection is usable again (the group commit then writes
    the group's writes one by one)."""
    url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    app = codara.App(url)

    @app.workflow(name="one", version="1")
    async def one(ctx: object, _: object) -> int:
        return 1

    async with app:
        store = app.store
        assert isinstance(store, SQLStore)
        a, b = await app.start_runs("one", [None, None])
        now = app.clock()
        tokens = {c.id: c.token for c in await store.claim("me", ["one@1"], 2, now, now + 60)}

        def result(run_id: str) -> JournalRecord:
            return JournalRecord(
                run_id, 0, -1, "result", "completed", "completed", None, "1", None, now, now,
                1, "p" * 64, "h" * 64, "",
            )  # fmt: skip

        await store.append(b, tokens[b], result(b))  # seq 0 of run b is taken now
        done = Finish("completed", "1", None, now)
        group = [Write(a, tokens[a], result(a), done), Write(b, tokens[b], result(b), done)]
        with pytest.raises(pg_errors.UniqueViolation):
            await store._write_group(group)
        run_a = await app.get_run(a)
        assert run_a.status == "running"
        assert await store.journal(a) == []
        for _ in range(8):  # every pooled connection answers again
            assert len(await store.journal(b)) == 1
        await store.finish(a, tokens[a], "completed", "1", None, result(a), now)
        assert (await app.get_run(a)).status == "completed"
