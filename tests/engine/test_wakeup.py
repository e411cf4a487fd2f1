"""Fast wake-up on PostgreSQL: LISTEN/NOTIFY tells an idle worker that a run became ready.

The listener must hear a NOTIFY sent from another connection, and must survive losing its
connection (``pg_terminate_backend``) by reconnecting. The timeouts below only stop a broken
test from hanging; nothing here measures speed (see benchmarks/resume_latency.py for that).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

import codara
from codara.config import load_settings
from codara.store import Store
from codara.store._notify_pg import CHANNEL, WAKE_SQL, WakeListener, wake_sql

GUARD = 60.0  # seconds before a hung test fails; never reached when things work


async def _until(
    check: Callable[[], Awaitable[bool] | bool], what: str, guard: float = GUARD
) -> None:
    async def loop() -> None:
        while True:
            got = check()
            if not isinstance(got, bool):
                got = await got
            if got:
                return
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(loop(), guard)
    except TimeoutError:
        pytest.fail(f"gave up waiting: {what}")


async def _notify(url: str, sql: str = WAKE_SQL) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
        await other.execute(sql)


def test_wake_sql_is_postgres_only() -> None:
    assert wake_sql("postgresql") == f"SELECT pg_notify('{CHANNEL}', '')"
    assert wake_sql("sqlite") is None


async def test_a_notify_from_another_connection_wakes_the_listener(pg_url: str) -> None:
    listener = WakeListener(pg_url)
    async with listener as event:
        await _until(lambda: listener.listening.is_set(), "the listener to LISTEN")
        assert event.is_set(), "set once on connecting: notifications before LISTEN are lost"
        event.clear()
        await _notify(pg_url)
        await _until(event.is_set, "the NOTIFY to reach the listener")
        # a notification inside a transaction arrives when it commits
        event.clear()
        other = await psycopg.AsyncConnection.connect(pg_url)
        async with other, other.transaction():
            await other.execute(WAKE_SQL)
            await other.execute(WAKE_SQL)  # folded into one by PostgreSQL
        await _until(event.is_set, "the committed NOTIFY to reach the listener")
        assert listener.connects == 1
    assert not listener.listening.is_set()


async def test_the_listener_reconnects_after_its_backend_is_terminated(pg_url: str) -> None:
    listener = WakeListener(pg_url, min_backoff=0.05)
    async with listener as event:
        await _until(lambda: listener.listening.is_set(), "the listener to LISTEN")
        first = listener.backend_pid
        assert first is not None
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
            cur = await admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            assert (await cur.fetchone()) == (True,)
        await _until(lambda: listener.connects >= 2, "the listener to reconnect")
        await _until(lambda: listener.listening.is_set(), "the listener to LISTEN again")
        assert listener.backend_pid not in (None, first)
        assert event.is_set(), "after a reconnect the worker is told to look for work"
        event.clear()
        await _notify(pg_url)
        await _until(event.is_set, "a NOTIFY after the reconnect")


async def test_quiet_periods_are_health_checked_without_reconnecting(pg_url: str) -> None:
    listener = WakeListener(pg_url, health_interval=0.02)
    async with listener as event:
        await _until(lambda: listener.listening.is_set(), "the listener to LISTEN")
        await asyncio.sleep(0.2)  # several quiet periods, each ended by a SELECT 1
        event.clear()
        await _notify(pg_url)
        await _until(event.is_set, "a NOTIFY between health checks")
        assert listener.connects == 1


async def test_an_unreachable_server_is_retried_quietly_and_stop_works() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listener = WakeListener(
        f"postgresql://postgres@127.0.0.1:{port}/nowhere", min_backoff=0.01, max_backoff=0.05
    )
    listener.start()
    await asyncio.sleep(0.3)  # a few failed attempts, none of them raised
    assert listener.connects == 0
    assert not listener.listening.is_set()
    await listener.stop()
    await listener.stop()  # twice is fine


# -- with the worker (after the Store.wakeups() / Worker change is applied) --------------------
async def test_an_idle_worker_is_woken_by_a_signal_not_by_its_poll(pg_url: str) -> None:
    """With a 60 s poll, the run can only be started and resumed this soon by wake-ups."""
    if "wakeups" not in vars(Store):
        pytest.skip("Store.wakeups() and the worker's wait on it are not applied yet")
    settings = load_settings(
        environ={}, overrides={"store": {"url": pg_url}, "worker": {"poll_interval": 60}}
    )
    app = codara.App(settings=settings)

    @app.workflow(name="gated")
    async def gated(ctx: codara.Context, _: Any) -> Any:
        return await ctx.wait_for("go")

    async with app:

        async def status(run_id: str) -> str:
            return (await app.get_run(run_id)).status

        stop = asyncio.Event()
        worker = asyncio.create_task(app.work(stop=stop))
        try:
            await asyncio.sleep(0.2)  # let the worker's first poll pass
            run_id = await app.start_run("gated")
            # a guard well under the poll interval: only a wake-up can make these pass
            await _until(lambda: _is(status(run_id), "waiting"), "the run to park", 30)
            await app.send_signal(run_id, "go", 42)
            await _until(lambda: _is(status(run_id), "completed"), "the run to resume", 30)
            assert await app.output(run_id) == 42
        finally:
            stop.set()
            await asyncio.wait_for(worker, GUARD)


async def _is(value: Awaitable[str], expected: str) -> bool:
    return (await value) == expected
