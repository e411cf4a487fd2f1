"""User SQL in ``ctx.transaction`` reaches the database as written, on SQLite and PostgreSQL.

The ``Tx`` handed to a transaction body never rewrites the SQL text: ``LIKE 'A%'``, a
literal ``'?'`` or ``'%'`` and ``::text`` casts mean what they say. Portable parameters are
named (``:name`` with a mapping, compiled for the dialect by SQLAlchemy); positional ones use
the driver's own style (``?`` on SQLite, ``%s`` on PostgreSQL). And a database error raised by
the body is the user's error: a unique violation on the user's own table fails the step (and
the run), it is not read as a lost lease.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

import codara
from codara.engine import NO_RETRY
from codara.store import FencedError, JournalRecord, Tx
from codara.trace import row_hash

FRUIT = [("Apple", 3), ("Avocado", 1), ("Banana", 2), ("what?", 4), ("100%", 5), ("x:y", 6)]


async def _app_with_fruit(url: str) -> codara.App:
    app = codara.App(url, durability="os", retry=NO_RETRY)
    await app.open()
    await app.store.execute_raw("CREATE TABLE fruit (name TEXT PRIMARY KEY, qty INTEGER)")
    for name, qty in FRUIT:
        await app.store.execute_raw("INSERT INTO fruit VALUES (?, ?)", (name, qty))
    return app


async def _in_transaction(app: codara.App, body: Any) -> Any:
    """Run ``body(tx)`` as one ``ctx.transaction`` of a workflow; return its result."""

    @app.workflow(name="q")
    async def q(ctx: codara.Context, _: None) -> Any:
        return await ctx.transaction("query", body)

    run_id = await app.start_run("q")
    outcome = await asyncio.wait_for(app.resume(run_id), 30)
    assert outcome.status == "completed", outcome.error
    return json.loads(json.dumps(outcome.output))  # rows as the journal keeps them: lists


async def test_like_and_literal_question_marks_and_percents_pass_through(db_url: str) -> None:
    app = await _app_with_fruit(db_url)
    try:

        async def body(tx: Tx) -> dict[str, Any]:
            return {
                "like": await tx.fetchall("SELECT name FROM fruit WHERE name LIKE 'A%' ORDER BY 1"),
                "like_named": await tx.fetchall(
                    "SELECT name FROM fruit WHERE name LIKE 'A%' AND qty > :least ORDER BY 1",
                    {"least": 1},
                ),
                "question": await tx.fetchall("SELECT qty FROM fruit WHERE name = 'what?'"),
                "question_named": await tx.fetchall(
                    "SELECT qty FROM fruit WHERE name = 'what?' OR name = :n ORDER BY 1",
                    {"n": "Banana"},
                ),
                "percent_named": await tx.fetchall(
                    "SELECT qty FROM fruit WHERE name = '100%' OR name = :n ORDER BY 1",
                    {"n": "Apple"},
                ),
                "escaped_colon": await tx.fetchall(
                    r"SELECT qty FROM fruit WHERE name = 'x\:y' AND qty = :q", {"q": 6}
                ),
                "updated": await tx.execute(
                    "UPDATE fruit SET qty = qty + :by WHERE name LIKE :prefix",
                    {"by": 10, "prefix": "A%"},
                ),
            }

        got = await _in_transaction(app, body)
        assert got["like"] == [["Apple"], ["Avocado"]]
        assert got["like_named"] == [["Apple"]]
        assert got["question"] == [[4]]
        assert got["question_named"] == [[2], [4]]
        assert got["percent_named"] == [[3], [5]]
        assert got["escaped_colon"] == [[6]]
        assert got["updated"] == 2
        rows = await app.store.execute_raw("SELECT qty FROM fruit WHERE name LIKE 'A%' ORDER BY 1")
        assert [r[0] for r in rows] == [11, 13]  # committed with the journal row
    finally:
        await app.close()


async def test_positional_parameters_use_the_drivers_own_style(db_url: str) -> None:
    app = await _app_with_fruit(db_url)
    mark = "%s" if app.store.dialect == "postgresql" else "?"
    try:

        async def body(tx: Tx) -> list[Any]:
            assert tx.dialect == app.store.dialect
            return await tx.fetchall(
                f"SELECT qty FROM fruit WHERE name = {mark} OR name = {mark} ORDER BY 1",
                ("Apple", "what?"),
            )

        assert await _in_transaction(app, body) == [[3], [4]]
    finally:
        await app.close()


@pytest.mark.postgres
async def test_postgres_casts_and_named_parameters(pg_url: str) -> None:
    app = await _app_with_fruit(pg_url)
    try:

        async def body(tx: Tx) -> list[Any]:
            return await tx.fetchall(
                "SELECT qty::text || '%', CAST(:n AS text) || '?' FROM fruit "
                "WHERE name = :n AND qty::int = :q",
                {"n": "Banana", "q": 2},
            )

        assert await _in_transaction(app, body) == [["2%", "Banana?"]]
    finally:
        await app.close()


async def test_a_named_parameter_without_a_value_fails_the_step_clearly(db_url: str) -> None:
    app = await _app_with_fruit(db_url)
    try:

        async def body(tx: Tx) -> list[Any]:
            return await tx.fetchall("SELECT qty FROM fruit WHERE name = :name", {"nme": "x"})

        @app.workflow(name="q")
        async def q(ctx: codara.Context, _: None) -> Any:
            return await ctx.transaction("query", body)

        outcome = await asyncio.wait_for(app.resume(await app.start_run("q")), 30)
        assert outcome.status == "failed"
        assert outcome.error is not None
        assert ":name" in outcome.error["message"]
    finally:
        await app.close()


# -- errors of the body are the user's ------------------------------------------------------
async def test_a_unique_violation_in_the_body_fails_the_step_not_the_lease(db_url: str) -> None:
    app = await _app_with_fruit(db_url)
    try:

        async def insert_twice(tx: Tx, name: str) -> None:
            await tx.execute("INSERT INTO fruit (name, qty) VALUES (:n, 1)", {"n": name})

        @app.workflow(name="dup")
        async def dup(ctx: codara.Context, _: None) -> None:
            await ctx.transaction("add", insert_twice, "Apple")  # Apple is there already

        run_id = await app.start_run("dup")
        outcome = await asyncio.wait_for(app.resume(run_id), 30)
        assert outcome.status == "failed", outcome
        record = await app.get_run(run_id)
        assert record.status == "failed"
        expected = "UniqueViolation" if app.store.dialect == "postgresql" else "IntegrityError"
        assert outcome.error is not None
        assert expected in outcome.error["message"], outcome.error
        rows = await app.journal(run_id)
        assert (rows[0].kind, rows[0].name, rows[0].status) == ("transaction", "add", "error")
        assert [r.kind for r in rows] == ["transaction", "result"]
        assert (await app.verify(run_id)).ok
        assert await app.store.execute_raw("SELECT qty FROM fruit WHERE name = 'Apple'") == [(3,)]
    finally:
        await app.close()


def _row(run_id: str, seq: int, prev: str, name: str) -> JournalRecord:
    fields: dict[str, Any] = dict(
        run_id=run_id,
        seq=seq,
        op=seq,
        kind="transaction",
        name=name,
        status="ok",
        input="[]",
        output="null",
        error=None,
        started_at=1.0,
        finished_at=2.0,
        attempts=1,
        prev_hash=prev,
    )
    return JournalRecord(**fields, hash=row_hash(**fields))


async def test_only_the_journals_own_key_means_fenced(db_url: str) -> None:
    """The same seq twice is a lost race (FencedError); a violation in the body is not."""
    app = await _app_with_fruit(db_url)
    try:

        @app.workflow(name="w")
        async def w(ctx: codara.Context, _: None) -> None:
            return None

        store = app.store
        run_id = await app.start_run("w")
        genesis = (await app.get_run(run_id)).genesis_hash
        now = time.time() + 1
        [claim] = await store.claim("me", ["w@1"], 1, now, now + 600)
        first = _row(run_id, 0, genesis, "s0")
        await store.append(run_id, claim.token, first)
        with pytest.raises(FencedError):
            await store.append(run_id, claim.token, first)

        async def noop(tx: Tx) -> None:
            await tx.fetchall("SELECT 1")

        if store.dialect == "postgresql":  # (SQLite's transaction raises IntegrityError here)
            with pytest.raises(FencedError):  # the body is fine, its row's seq is taken
                await store.transaction(run_id, claim.token, noop, lambda _: first)

        async def dup(tx: Tx) -> None:
            await tx.execute("INSERT INTO fruit (name, qty) VALUES ('Banana', 9)")

        with pytest.raises(Exception) as info:
            await store.transaction(
                run_id, claim.token, dup, lambda _: _row(run_id, 1, first.hash, "s1")
            )
        assert not isinstance(info.value, FencedError)
        expected = "UniqueViolation" if store.dialect == "postgresql" else "IntegrityError"
        assert type(info.value).__name__ == expected
    finally:
        await app.close()
