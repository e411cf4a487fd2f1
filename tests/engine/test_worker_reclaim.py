"""A worker that claims again a run it is still executing (its own lease on it lapsed: the loop
stalled, or heartbeats failed for longer than the lease) keeps the new attempt alive.

The lease lapses here because the test moves the app's clock past it while a step waits; the
worker's next poll then claims the run again, under the same owner, with a new token. The
old attempt is fenced by that claim. The new attempt must be the one the worker tracks and
heartbeats: before the fix the old attempt's exit removed it, so it lost its lease again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import codara
from codara.config import Settings, StoreSettings, WorkerSettings
from codara.testing._clock import FakeClock

LEASE = 3.0  # a heartbeat every second of real time; the fake clock decides what lapsed
WAIT = 20.0  # the most any awaited state change may take (a wide margin on a loaded machine)


async def _until(what: str, check: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await check():
        assert loop.time() < deadline, f"not within {WAIT} s: {what}"
        await asyncio.sleep(0.02)


async def test_a_run_claimed_again_by_its_own_worker_keeps_its_new_attempt_alive(
    db_url: str,
) -> None:
    clock = FakeClock()
    settings = Settings(
        store=StoreSettings(url=db_url, durability="os"),
        worker=WorkerSettings(lease_seconds=LEASE, poll_interval=0.02),
    )
    app = codara.App(settings=settings, clock=clock)
    executions: list[str] = []
    gate_a, gate_b = asyncio.Event(), asyncio.Event()

    async def a() -> str:
        executions.append("a")
        await gate_a.wait()
        return "a"

    async def b() -> str:
        executions.append("b")
        await gate_b.wait()
        return "b"

    @app.workflow(name="two")
    async def two(ctx: codara.Context, _: Any) -> str:
        return await ctx.step("a", a) + await ctx.step("b", b)

    async with app:
        run_id = await app.start_run("two")
        worker = app.worker(concurrency=2)
        stop = asyncio.Event()
        working = asyncio.create_task(worker.run(stop=stop))

        async def attempts() -> int:
            return (await app.get_run(run_id)).attempts

        async def lease_until() -> float:
            rows = await app.store.execute_raw(
                "SELECT ready_at FROM codara_runs WHERE id = ?", (run_id,)
            )
            return float(rows[0][0])

        try:

            async def first_attempt_in_a() -> bool:
                return executions == ["a"]

            await _until("the first attempt runs step a", first_attempt_in_a)
            first = worker.active[run_id]

            async def claimed_again() -> bool:
                if await attempts() >= 2:
                    return True
                # the lease lapses; the next poll (every 20 ms) claims the run again, unless a
                # heartbeat (every second) renewed it first: then let it lapse once more
                clock.advance(2 * LEASE)
                await asyncio.sleep(0.1)
                return await attempts() >= 2

            await _until("the worker claims its own lapsed run again", claimed_again)
            assert (await app.get_run(run_id)).owner == worker.id
            gate_a.set()  # step a returns; the old attempt, if still running, is fenced

            async def second_attempt_in_b() -> bool:
                return "b" in executions

            await _until("the new attempt reaches step b", second_attempt_in_b)
            current = worker.active.get(run_id)
            assert current is not None, "the new attempt is not tracked by its worker"
            assert current is not first
            assert not current.done()
            assert worker.leases.tasks.get(run_id) is current, "the new attempt gets no heartbeat"

            # its lease keeps being renewed: each time the clock moves (by less than a lease),
            # a heartbeat within a second of real time extends the lease from the new now
            for _ in range(3):
                clock.advance(LEASE / 2)
                target = clock() + LEASE

                async def renewed(target: float = target) -> bool:
                    return await lease_until() >= target

                await _until("a heartbeat renews the new attempt's lease", renewed)
                assert await attempts() == 2  # never lapsed, never claimed a third time

            gate_b.set()

            async def completed() -> bool:
                return (await app.get_run(run_id)).status == "completed"

            await _until("the run completes", completed)
        finally:
            gate_a.set()
            gate_b.set()
            stop.set()
            await working
        assert await app.output(run_id) == "ab"
        assert await attempts() == 2
        journal = [(r.kind, r.name, r.status) for r in await app.journal(run_id)]
        assert journal == [
            ("step", "a", "ok"),
            ("step", "b", "ok"),
            ("result", "completed", "completed"),
        ]
        assert executions == ["a", "a", "b"]  # a ran in both attempts (at least once), b once
        assert not worker.active
        assert (await app.verify()).ok
