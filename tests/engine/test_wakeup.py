"""Fast wake-up: an idle worker hears at once that a run became ready.

Inside one process (both databases) the store that commits the write sets the worker's
event; across processes on PostgreSQL, LISTEN/NOTIFY does. The listener must hear a NOTIFY
sent from another connection, and must survive losing its connection
(``pg_terminate_backend``) by reconnecting. The timeouts below only stop a broken
test from hanging; nothing here measures speed (see benchmarks/resume_latency.py for that).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

import codara
from codara.config import load_settings
from codara.engine._worker import Poll
from codara.review import Principal, ReviewGate, Reviews, load_policies
from codara.store import _local_wake
from codara.store._base import signal_run
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


# -- in-process wake-ups and the adaptive poll (both databases) ------------------------------
POLICIES: dict[str, Any] = {
    "policy_input": {"amount": "double"},
    "policies": [{"name": "always", "when": "amount > 0.0", "outcome": "ask", "role": "ops"}],
}
OPS = Principal("olga", frozenset({"ops"}))


def _no_poll_app(url: str) -> codara.App:
    """An app whose worker polls only once a minute: anything sooner is a wake-up."""
    settings = load_settings(
        environ={},
        overrides={
            "store": {"url": url, "durability": "os"},
            "worker": {"poll_interval": 60, "poll_min_interval": 60},
        },
    )
    return codara.App(settings=settings)


async def test_a_worker_in_the_same_process_wakes_on_start_signal_and_review(
    db_url: str,
) -> None:
    """Starting a run, sending a signal and deciding a review in the worker's own process wake
    it at once, on SQLite as on PostgreSQL. With a 60 s poll, only the wake-ups can move these
    runs within the guards (the in-process one, and the LISTEN or SQLite watch that any
    process's commit triggers; the next test takes the in-process one alone)."""
    app = _no_poll_app(db_url)
    gate = ReviewGate(load_policies(POLICIES, workflow="reviewed"), workflow="reviewed")

    @app.workflow(name="gated")
    async def gated(ctx: codara.Context, _: Any) -> Any:
        return await ctx.wait_for("go")

    @app.workflow(name="reviewed")
    async def reviewed(ctx: codara.Context, _: Any) -> Any:
        result = await gate.check(ctx, "act", {"amount": 5.0}, inputs={"amount": 5.0})
        return result.outcome

    async with app:

        async def status(run_id: str) -> str:
            return (await app.get_run(run_id)).status

        stop = asyncio.Event()
        worker = asyncio.create_task(app.work(stop=stop))
        try:
            await asyncio.sleep(0.2)  # the worker's first look has found nothing
            run_id = await app.start_run("gated")
            await _until(lambda: _is(status(run_id), "waiting"), "the run to park", 20)
            await app.send_signal(run_id, "go", 42)
            await _until(lambda: _is(status(run_id), "completed"), "the signal to wake it", 20)
            assert await app.output(run_id) == 42

            review_run = await app.start_run("reviewed")
            await _until(lambda: _is(status(review_run), "waiting"), "the review to park", 20)
            reviews = Reviews(app.store, app.clock)
            [item] = await reviews.queue(OPS, run_id=review_run)
            await reviews.approve(OPS, item.id)
            await _until(
                lambda: _is(status(review_run), "completed"), "the decision to wake it", 20
            )
            assert await app.output(review_run) == "approved"
        finally:
            stop.set()
            await asyncio.wait_for(worker, GUARD)


async def test_a_second_store_on_the_same_database_wakes_the_first_ones_worker(
    db_url: str,
) -> None:
    """Wake-ups are per database, not per store object: a Client opened separately in the
    worker's process (as an API beside a worker would) wakes it too; another database does
    not."""
    app = _no_poll_app(db_url)

    @app.workflow(name="gated")
    async def gated(ctx: codara.Context, _: Any) -> Any:
        return await ctx.wait_for("go")

    async with app:
        stop = asyncio.Event()
        worker = asyncio.create_task(app.work(stop=stop))
        try:
            await asyncio.sleep(0.2)
            async with codara.Client(db_url) as client:
                assert client.store is not app.store
                assert client.store.wake_key == app.store.wake_key
                run_id = await client.start_run("gated")
                await _until(lambda: _is(_status(app, run_id), "waiting"), "the run to park", 20)
                await client.send_signal(run_id, "go", "hi")
                await _until(
                    lambda: _is(_status(app, run_id), "completed"), "the run to resume", 20
                )
        finally:
            stop.set()
            await asyncio.wait_for(worker, GUARD)


async def test_only_a_committed_write_wakes_and_only_one_that_makes_a_run_ready(
    db_url: str,
) -> None:
    """The in-process wake-up of each write that makes a run ready (start, signal, review
    decision, retry), right after its commit; none for a write that makes nothing ready or
    for a transaction rolled back."""
    app = codara.App(db_url, durability="os")
    gate = ReviewGate(load_policies(POLICIES, workflow="reviewed"), workflow="reviewed")

    @app.workflow(name="gated")
    async def gated(ctx: codara.Context, _: Any) -> Any:
        return await ctx.wait_for("go")

    @app.workflow(name="reviewed")
    async def reviewed(ctx: codara.Context, _: Any) -> Any:
        result = await gate.check(ctx, "act", {"amount": 5.0}, inputs={"amount": 5.0})
        if result.outcome == "approved":
            raise Failing("fails after the review, to be retried")
        return result.outcome

    async with app:
        store = app.store
        # the in-process wake-up alone (a worker's event is also set by LISTEN or the
        # SQLite watch, which any commit may trigger)
        with _local_wake.listening(store.wake_key, asyncio.Event()) as event:
            assert _local_wake.listeners(store.wake_key) == 1
            run_id = await app.start_run("gated")
            assert event.is_set(), "set when create_runs returns: the run is committed"
            await app.work(until_idle=True)
            assert (await app.get_run(run_id)).status == "waiting"

            event.clear()
            await app.get_run(run_id)
            async with store.tx() as tx:  # a write that makes nothing ready
                await tx.execute("UPDATE codara_runs SET updated_at = updated_at WHERE id = ?",
                                 (run_id,))  # fmt: skip
            assert not event.is_set()

            class Abort(Exception):
                pass

            async def signal_then_abort() -> None:
                async with store.tx() as tx:
                    assert await signal_run(tx, run_id, "go", None, app.clock())
                    raise Abort  # rolled back: nothing became ready, nobody is woken

            with pytest.raises(Abort):
                await signal_then_abort()
            assert not event.is_set()
            assert (await app.get_run(run_id)).status == "waiting"

            await app.send_signal(run_id, "go", 1)
            assert event.is_set(), "set when the signal's transaction has committed"

            review_run = await app.start_run("reviewed")
            await app.work(until_idle=True)
            reviews = Reviews(store, app.clock)
            [item] = await reviews.queue(OPS, run_id=review_run)
            event.clear()
            await reviews.approve(OPS, item.id)
            assert event.is_set(), "set when the decision's transaction has committed"
            await app.work(until_idle=True)
            assert (await app.get_run(review_run)).status == "failed"
            event.clear()
            await app.retry(review_run)
            assert event.is_set(), "set when the retry has committed"
        assert _local_wake.listeners(store.wake_key) == 0


class Failing(Exception):
    non_retryable = True


async def test_a_wake_up_from_another_thread_reaches_the_loop_of_the_worker() -> None:
    event = asyncio.Event()
    with _local_wake.listening("test:threads", event):
        await asyncio.to_thread(_local_wake.notify, "test:threads")
        await asyncio.wait_for(event.wait(), GUARD)
    _local_wake.notify("test:threads")  # nobody listens: nothing to do


def test_the_poll_starts_short_after_activity_and_doubles_to_the_longest() -> None:
    poll = Poll(0.005, 0.1)
    assert [poll.next() for _ in range(7)] == [0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.1]
    poll.active()
    assert poll.next() == 0.005
    assert Poll(1.0, 0.1).next() == 0.1, "the shortest never exceeds the longest"


async def test_an_idle_worker_is_woken_by_a_commit_of_another_process(db_url: str) -> None:
    """With a 60 s poll, a run started by another process can only be found this soon
    through LISTEN/NOTIFY (PostgreSQL) or the watch of ``PRAGMA data_version`` (SQLite)."""
    app = _no_poll_app(db_url)

    @app.workflow(name="plain")
    async def plain(ctx: codara.Context, _: Any) -> Any:
        return "done"

    async with app:
        stop = asyncio.Event()
        worker = asyncio.create_task(app.work(stop=stop))
        try:
            await asyncio.sleep(0.3)  # the worker is idle, LISTENing
            script = (
                "import asyncio, codara\n"
                "async def main():\n"
                f"    async with codara.Client({db_url!r}) as c:\n"
                "        print(await c.start_run('plain'))\n"
                "asyncio.run(main())\n"
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(proc.communicate(), GUARD)
            assert proc.returncode == 0
            run_id = out.decode().strip()
            await _until(lambda: _is(_status(app, run_id), "completed"), "the NOTIFY", 20)
        finally:
            stop.set()
            await asyncio.wait_for(worker, GUARD)


async def _status(app: codara.App, run_id: str) -> str:
    return (await app.get_run(run_id)).status


async def _is(value: Awaitable[str], expected: str) -> bool:
    return (await value) == expected
