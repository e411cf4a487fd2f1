"""A PostgreSQL restart is a blip, not a stall: on a private cluster (see conftest.py).

The pool discards connections the restart killed and opens new ones; while the server is
away every store call either succeeds or raises StoreUnavailableError within the pool's
acquire timeout (never hangs); the API answers 503 quickly meanwhile and is healthy again
within seconds; workers lose, fail and duplicate nothing.

Bounds here are behavioural with a wide margin (the task sets them): a call "hangs" if it
takes longer than ``HANG`` seconds, and the store must be back within ``RECOVER`` seconds of
the server being back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import codara
from codara.auth import Users
from codara.engine import RetryPolicy
from codara.errors import StoreUnavailableError
from codara.store import JournalRecord, Store, Tx, open_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PrivateCluster = Any  # the private_pg fixture's class (tests/store/conftest.py)

HANG = 20.0
RECOVER = 30.0
POOL_TIMEOUT = 2.0


def _new_db(cluster: PrivateCluster, password: str | None = None) -> str:
    url = cluster.create_database(f"codara_r_{uuid.uuid4().hex[:10]}")
    if password is not None:
        url = url.replace("postgres@", f"postgres:{password}@")
    return url


class Probe:
    """Concurrent loops of store calls; every call's start, end and outcome is recorded."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.results: list[tuple[float, float, str]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 1000

    async def _one(self, kind: int) -> None:
        if kind == 0:
            await self.store.count_runs()
        elif kind == 1:
            await self.store.get_run(self.run_id)
        elif kind == 2:
            self._seq += 1
            rid = uuid.uuid4().hex
            await self.store.create_runs([(rid, "w", "1", "null", None, "g", None)], time.time())
        else:
            async with self.store.tx() as tx:
                await tx.fetchall("SELECT id FROM codara_runs WHERE id = ?", (self.run_id,))

    async def _loop(self, kind: int) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(self._one(kind), HANG)
                outcome = "ok"
            except StoreUnavailableError:
                outcome = "unavailable"
            except TimeoutError:
                outcome = "hang"
            except Exception as exc:  # anything else is a failure of the test
                outcome = f"other: {type(exc).__name__}: {exc}"
            self.results.append((t0, time.monotonic(), outcome))
            await asyncio.sleep(0.01)

    def start(self, loops: int) -> None:
        self._tasks = [asyncio.create_task(self._loop(i % 4)) for i in range(loops)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def ok_after(self, since: float) -> float | None:
        """Wait (up to RECOVER s) for a call started after ``since`` to succeed."""
        deadline = time.monotonic() + RECOVER
        while time.monotonic() < deadline:
            for t0, _, outcome in self.results:
                if t0 >= since and outcome == "ok":
                    return t0 - since
            await asyncio.sleep(0.05)
        return None


@pytest.fixture
async def store_on_private(private_pg: PrivateCluster) -> AsyncIterator[tuple[Store, str]]:
    url = _new_db(private_pg)
    store = await open_store(url, pool_size=4, pool_timeout=POOL_TIMEOUT)
    try:
        yield store, url
    finally:
        with contextlib.suppress(Exception):
            await store.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_the_pool_recovers_after_a_restart_and_no_call_hangs(
    private_pg: PrivateCluster, store_on_private: tuple[Store, str], mode: str
) -> None:
    store, _ = store_on_private
    [run_id] = await store.create_runs([("r0", "w", "1", "null", None, "g", None)], time.time())
    probe = Probe(store, run_id)
    probe.start(12)  # three times the pool: callers queue for a connection
    await asyncio.sleep(0.5)
    try:
        for _ in range(2):
            await asyncio.to_thread(private_pg.restart, mode)
            back = time.monotonic()
            took = await probe.ok_after(back)
            assert took is not None, (
                f"no store call succeeded within {RECOVER} s after the {mode} restart: "
                f"{Counter(o for _, _, o in probe.results)}\n{private_pg.log_tail()}"
            )
            await asyncio.sleep(0.5)
    finally:
        await probe.stop()
    outcomes = Counter(o for _, _, o in probe.results)
    bad = {o: n for o, n in outcomes.items() if o not in ("ok", "unavailable")}
    assert not bad, f"calls must succeed or raise StoreUnavailableError: {bad}"
    # the whole pool is healthy again: many concurrent calls all succeed
    got = await asyncio.wait_for(asyncio.gather(*(store.get_run(run_id) for _ in range(20))), HANG)
    assert all(r is not None and r.id == run_id for r in got)


async def test_calls_while_the_server_is_down_raise_store_unavailable_quickly(
    private_pg: PrivateCluster,
) -> None:
    url = _new_db(private_pg, password="s3cr3t-pw")
    store = await open_store(url, pool_size=2, pool_timeout=POOL_TIMEOUT)
    try:
        await store.count_runs()
        await asyncio.to_thread(private_pg.stop, "fast")
        try:
            errors: list[StoreUnavailableError] = []
            for call in (
                store.count_runs,
                lambda: store.get_run("x"),
                lambda: store.heartbeat("me", ["x"], 1.0, 0.0),
                lambda: store.execute_raw("SELECT 1"),
                store.count_runs,
            ):
                with pytest.raises(StoreUnavailableError) as info:
                    await asyncio.wait_for(call(), HANG)
                errors.append(info.value)
        finally:
            await asyncio.to_thread(private_pg.start)
        for err in errors:
            text = str(err)
            assert "s3cr3t-pw" not in text
            assert f"127.0.0.1:{private_pg.port}" in err.message
            assert err.hint
        assert err.code == "store_unavailable"
        took = None
        deadline = time.monotonic() + RECOVER
        while time.monotonic() < deadline:
            try:
                await store.count_runs()
                took = True
                break
            except StoreUnavailableError:
                await asyncio.sleep(0.1)
        assert took, "the store did not come back after the server started again"
    finally:
        await store.close()


async def test_the_listen_connection_reconnects_after_a_restart(private_pg: PrivateCluster) -> None:
    from codara.store._notify_pg import WakeListener

    url = _new_db(private_pg)
    listener = WakeListener(url, min_backoff=0.05, max_backoff=1.0)
    async with listener as event:
        await asyncio.wait_for(listener.listening.wait(), RECOVER)
        first = listener.backend_pid
        for mode in ("fast", "immediate"):
            await asyncio.to_thread(private_pg.restart, mode)
            deadline = time.monotonic() + RECOVER
            while not (listener.listening.is_set() and listener.backend_pid != first):
                assert time.monotonic() < deadline, f"LISTEN not back after the {mode} restart"
                await asyncio.sleep(0.05)
            first = listener.backend_pid
        event.clear()
        store = await open_store(url, pool_size=1)
        try:
            await store.create_runs([("n1", "w", "1", "null", None, "g", None)], time.time())
        finally:
            await store.close()
        await asyncio.wait_for(event.wait(), HANG)  # a NOTIFY after the restarts arrives
    assert listener.connects >= 3


# -- the API --------------------------------------------------------------------------------
async def test_the_api_answers_503_while_down_and_is_healthy_again_after_a_restart(
    private_pg: PrivateCluster,
) -> None:
    import uvicorn

    from codara.api import create_app

    url = _new_db(private_pg)
    app = codara.App(url)
    async with app:
        users = Users(app.store, app.clock)
        await users.add("root", ["admin"])
        token = await users.create_token("root", "t")
    app = codara.App(url)
    port = private_pg.free_port()
    config = uvicorn.Config(create_app(app), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    auth = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=HANG) as client:
            while not server.started:
                assert not serving.done(), "the server did not start"
                await asyncio.sleep(0.05)
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/api/runs", headers=auth)).status_code == 200

            await asyncio.to_thread(private_pg.stop, "fast")
            try:
                for _ in range(3):  # more store calls than the pool has connections
                    health = await client.get("/healthz")
                    assert health.status_code == 503, health.text
                    assert health.json()["error"]["code"] == "store_unavailable"
                    runs = await client.get("/api/runs", headers=auth)
                    assert runs.status_code == 503, runs.text
                    assert runs.json()["error"]["code"] == "store_unavailable"
            finally:
                await asyncio.to_thread(private_pg.start)
            await _healthy_again(client, auth)

            for mode in ("fast", "immediate"):
                await asyncio.to_thread(private_pg.restart, mode)
                await _healthy_again(client, auth)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, HANG)


async def _healthy_again(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    deadline = time.monotonic() + RECOVER
    seen: Counter[int] = Counter()
    while time.monotonic() < deadline:
        health = await client.get("/healthz")
        seen[health.status_code] += 1
        if health.status_code == 200:
            runs = await client.get("/api/runs", headers=auth)
            if runs.status_code == 200:
                return
            assert runs.status_code == 503, runs.text
        else:
            assert health.status_code == 503, health.text
        await asyncio.sleep(0.1)
    pytest.fail(f"the API was not healthy again within {RECOVER} s: {dict(seen)}")


# -- workers ----------------------------------------------------------------------------------
RUNS, STEPS = 400, 3
LEDGER = "CREATE TABLE ledger (run_id TEXT NOT NULL, step INTEGER NOT NULL)"


def _ledger_app(url: str) -> codara.App:
    app = codara.App(url, durability="os", retry=RetryPolicy(initial_delay=0.01))

    async def append_ledger(tx: Tx, run_id: str, step: int) -> int:
        await tx.execute(
            "INSERT INTO ledger (run_id, step) VALUES (:run_id, :step)",
            {"run_id": run_id, "step": step},
        )
        return step

    @app.workflow(name="ledger")
    async def ledger(ctx: codara.Context, n: int) -> int:
        for i in range(n):
            await asyncio.sleep(0.01)
            await ctx.transaction(f"s{i}", append_ledger, ctx.run_id, i)
        return n

    return app


@pytest.mark.parametrize("mode", ["fast"])
async def test_workers_lose_fail_and_repeat_nothing_across_a_restart(
    private_pg: PrivateCluster, mode: str
) -> None:
    url = _new_db(private_pg)
    app = _ledger_app(url)
    async with app:
        await app.store.execute_raw(LEDGER)
        ids = await app.start_runs("ledger", [STEPS] * RUNS)
        stop = asyncio.Event()
        workers = [asyncio.create_task(app.work(concurrency=64, stop=stop)) for _ in range(2)]
        try:
            await _wait_completed(app, RUNS // 4, workers)
            await asyncio.to_thread(private_pg.restart, mode)
            await _wait_completed(app, RUNS, workers, limit=45.0)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), HANG)
        counts = await app.store.count_runs()
        assert counts == {"completed": RUNS}, counts
        ledger = await app.store.execute_raw("SELECT run_id, step FROM ledger")
        per_step = Counter((str(r), int(s)) for r, s in ledger)
        assert set(per_step) == {(i, s) for i in ids for s in range(STEPS)}
        assert max(per_step.values()) == 1, "a transaction's effect was applied twice"
        for run_id in ids:
            rows: list[JournalRecord] = await app.journal(run_id)
            ok = [r for r in rows if r.kind == "transaction" and r.status == "ok"]
            assert [r.name for r in ok] == [f"s{i}" for i in range(STEPS)]
            assert [r.seq for r in rows] == list(range(len(rows)))
        report = await app.verify()
        assert report.ok, report


async def _wait_completed(
    app: codara.App, n: int, workers: list[asyncio.Task[Any]], limit: float = 45.0
) -> None:
    deadline = time.monotonic() + limit
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        for w in workers:
            if w.done():
                w.result()  # a worker that died raises here
                pytest.fail("a worker stopped by itself")
        with contextlib.suppress(StoreUnavailableError):
            counts = await app.store.count_runs()
            if counts.get("failed"):
                failed = await app.store.list_runs(status="failed", limit=1)
                pytest.fail(f"a run failed: {failed[0].error}")
            if counts.get("completed", 0) >= n:
                return
        await asyncio.sleep(0.1)
    pytest.fail(f"{n} runs did not complete within {limit} s: {counts}")


# -- the pool on its own (the shared server: nothing is restarted) ----------------------------
async def test_waiting_for_a_connection_is_bounded_and_a_cancelled_call_frees_its_slot(
    pg_url: str,
) -> None:
    store = await open_store(pg_url, pool_size=2, pool_timeout=0.5)
    try:
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with store.tx() as tx:
                await tx.fetchall("SELECT 1")
                held.set()
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await asyncio.wait_for(held.wait(), HANG)
        await asyncio.sleep(0.1)
        with pytest.raises(StoreUnavailableError, match="no connection became free"):
            await asyncio.wait_for(store.count_runs(), HANG)  # both lent: bounded wait
        release.set()
        await asyncio.gather(*holders)

        for _ in range(3):  # a caller cancelled mid-query: its connection is not lost
            task = asyncio.create_task(store.execute_raw("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.3)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        both = store.execute_raw("SELECT pg_sleep(0.2)"), store.execute_raw("SELECT 1")
        answers: list[object] = list(await asyncio.wait_for(asyncio.gather(*both), HANG))
        assert answers == [[("",)], [(1,)]]
    finally:
        await store.close()
