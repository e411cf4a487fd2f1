"""Durable timers and signal waits: parked in the database, resumed from any process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import codara
from codara.config import load_settings
from codara.errors import ConflictError, NotFoundError, WaitTimeoutError
from codara.testing._clock import FakeClock


async def test_wait_for_parks_the_run_and_a_signal_resumes_it(app: codara.App) -> None:
    @app.workflow(name="approve")
    async def wf(ctx: codara.Context, _: None) -> Any:
        decision = await ctx.wait_for("decision")
        return {"got": decision}

    run_id = await app.start_run("approve")
    outcome = await app.resume(run_id)
    assert outcome.status == "waiting"
    record = await app.get_run(run_id)
    assert (record.status, record.owner, record.ready_at) == ("waiting", None, None)
    assert record.waiting_for == "decision"
    # Nothing to do while it waits: a worker finds no work and holds nothing.
    assert await app.work(until_idle=True) == 0

    await app.send_signal(run_id, "decision", {"approved": True})
    assert await app.work(until_idle=True) == 1
    record = await app.get_run(run_id)
    assert record.status == "completed"
    assert await app.output(run_id) == {"got": {"approved": True}}
    kinds = [(r.kind, r.name) for r in await app.journal(run_id)]
    assert kinds == [("wait", "decision"), ("signal", "decision"), ("result", "completed")]


async def test_a_signal_sent_before_the_wait_is_kept_for_it(app: codara.App) -> None:
    @app.workflow(name="early")
    async def wf(ctx: codara.Context, _: None) -> Any:
        await ctx.step("first", lambda: 1)
        return await ctx.wait_for("go")

    run_id = await app.start_run("early")
    await app.send_signal(run_id, "go", 7)
    assert (await app.resume(run_id)).output == 7


async def test_wait_timeout_fires_even_if_no_worker_ran_at_the_deadline(
    db_url: str, clock: FakeClock
) -> None:
    app = codara.App(db_url, clock=clock)

    @app.workflow(name="deadline")
    async def wf(ctx: codara.Context, _: None) -> str:
        try:
            await ctx.wait_for("reply", timeout=3600)
        except WaitTimeoutError:
            return "timed out"
        return "replied"

    async with app:
        run_id = await app.start_run("deadline")
        await app.work(until_idle=True)
        assert (await app.get_run(run_id)).status == "waiting"
        clock.advance(3599)
        assert await app.work(until_idle=True) == 0
        clock.advance(2)  # the deadline passed while nothing ran
        assert await app.work(until_idle=True) == 1
        assert await app.output(run_id) == "timed out"


async def test_durable_sleep(db_url: str, clock: FakeClock) -> None:
    app = codara.App(db_url, clock=clock)
    done: list[str] = []

    @app.workflow(name="nap")
    async def wf(ctx: codara.Context, _: None) -> str:
        await ctx.sleep(86_400)
        done.append("woke")
        return "rested"

    async with app:
        run_id = await app.start_run("nap")
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
        assert record.status == "sleeping"
        assert record.ready_at == pytest.approx(clock.now + 86_400)
        clock.advance(86_401)
        await app.work(until_idle=True)
        assert await app.output(run_id) == "rested"
        assert done == ["woke"]


async def test_several_parallel_waits_each_resume_correctly(app: codara.App) -> None:
    @app.workflow(name="fanout")
    async def wf(ctx: codara.Context, _: None) -> list[Any]:
        return list(await asyncio.gather(*(ctx.wait_for(f"review-{i}") for i in range(3))))

    run_id = await app.start_run("fanout")
    await app.work(until_idle=True)
    assert (await app.get_run(run_id)).status == "waiting"
    for i in (2, 0):
        await app.send_signal(run_id, f"review-{i}", f"decision {i}")
        await app.work(until_idle=True)
        assert (await app.get_run(run_id)).status == "waiting"
    await app.send_signal(run_id, "review-1", "decision 1")
    await app.work(until_idle=True)
    assert await app.output(run_id) == ["decision 0", "decision 1", "decision 2"]
    assert (await app.verify(run_id)).ok


async def test_signal_to_a_finished_or_unknown_run_is_refused(app: codara.App) -> None:
    @app.workflow(name="quick")
    async def wf(ctx: codara.Context, _: None) -> int:
        return 1

    run_id = await app.start_run("quick")
    await app.work(until_idle=True)
    with pytest.raises(ConflictError, match="completed"):
        await app.send_signal(run_id, "late")
    with pytest.raises(NotFoundError):
        await app.send_signal("no-such-run", "x")


async def test_cancel_stops_a_waiting_run_and_fences_its_owner(app: codara.App) -> None:
    @app.workflow(name="long")
    async def wf(ctx: codara.Context, _: None) -> None:
        await ctx.wait_for("never")

    run_id = await app.start_run("long")
    await app.work(until_idle=True)
    await app.cancel(run_id)
    record = await app.get_run(run_id)
    assert record.status == "cancelled"
    with pytest.raises(ConflictError):
        await app.send_signal(run_id, "never")
    with pytest.raises(ConflictError, match="already cancelled"):
        await app.cancel(run_id)


async def test_cancel_interrupts_a_running_run(db_url: str) -> None:
    settings = load_settings(overrides={"store": {"url": db_url}, "worker": {"lease_seconds": 0.6}})
    app = codara.App(settings=settings)
    started = asyncio.Event()
    steps: list[int] = []

    @app.workflow(name="busy")
    async def wf(ctx: codara.Context, _: None) -> None:
        for i in range(1000):

            async def tick(i: int = i) -> int:
                started.set()
                await asyncio.sleep(0.02)
                return i

            steps.append(await ctx.step(f"t{i}", tick))

    async with app:
        run_id = await app.start_run("busy")
        stop = asyncio.Event()
        worker = asyncio.create_task(app.work(stop=stop))
        await started.wait()
        await app.cancel(run_id)
        await asyncio.sleep(1.0)
        count = len(steps)
        await asyncio.sleep(0.5)
        stop.set()
        await worker
        assert len(steps) == count, "a cancelled run must stop executing steps"
        assert count < 1000
        record = await app.get_run(run_id)
        assert record.status == "cancelled"
        assert len(await app.journal(run_id)) <= count + 1
