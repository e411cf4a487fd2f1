"""Operations: inline runs keep their lease, workers outlive store failures, poison runs fail,
idempotency keys are per workflow, and operators retry and fork failed runs."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import codara
from codara.config import Settings, StoreSettings, WorkerSettings
from codara.engine import NO_RETRY
from codara.engine._executor import HANDBACK_DELAY
from codara.errors import ConflictError, InputError, NotFoundError, StoreUnavailableError
from codara.testing._clock import FakeClock


def _app(url: str, clock: FakeClock | None = None, **worker: Any) -> codara.App:
    settings = Settings(
        store=StoreSettings(url=url, durability="os"),
        worker=WorkerSettings(**{"poll_interval": 0.02, **worker}),
    )
    if clock is None:
        return codara.App(settings=settings)
    return codara.App(settings=settings, clock=clock)


# -- 1. inline runs heartbeat ---------------------------------------------------------------
async def test_an_inline_run_renews_its_lease_so_a_worker_never_runs_its_step_again(
    db_url: str,
) -> None:
    app = _app(db_url, lease_seconds=1.0)
    executions: list[str] = []

    async def slow() -> str:
        executions.append("slow")
        await asyncio.sleep(3)  # three leases long
        return "done"

    @app.workflow(name="long")
    async def long(ctx: codara.Context, _: Any) -> str:
        return await ctx.step("slow", slow)

    async with app:
        inline = asyncio.create_task(app.run("long"))
        while not executions:  # the inline run owns it and the step is running: now a worker
            await asyncio.sleep(0.01)
        (run,) = await app.store.list_runs()
        assert run.owner is not None
        assert run.owner.startswith("inline:")
        stop = asyncio.Event()
        worker = asyncio.create_task(app.work(stop=stop))
        try:
            assert await inline == "done"
        finally:
            stop.set()
            await worker
        steps = [r for r in await app.journal(run.id) if r.kind == "step"]
    assert executions == ["slow"]
    assert [(r.name, r.status) for r in steps] == [("slow", "ok")]


async def test_an_inline_run_stops_when_its_run_is_cancelled_elsewhere(db_url: str) -> None:
    app = _app(db_url, lease_seconds=1.0)
    started = asyncio.Event()

    async def endless() -> str:
        started.set()
        await asyncio.sleep(120)
        return "never"

    @app.workflow(name="endless")
    async def wf(ctx: codara.Context, _: Any) -> str:
        return await ctx.step("endless", endless)

    async with app:
        run_id = await app.start_run("endless")
        inline = asyncio.create_task(app.resume(run_id))
        await started.wait()
        await app.cancel(run_id)  # from "another process": the heartbeat notices
        outcome = await asyncio.wait_for(inline, 60)  # far less than the step's 120 s
        record = await app.get_run(run_id)
    assert outcome.status == "lost"
    assert record.status == "cancelled"


# -- 2. workers survive store failures ------------------------------------------------------
async def test_a_worker_outlives_a_store_failure_and_carries_on_when_it_is_back(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(db_url)

    @app.workflow(name="hello")
    async def hello(ctx: codara.Context, name: str) -> str:
        return await ctx.step("greet", lambda: f"hello {name}")

    caplog.set_level(logging.WARNING, logger="codara.worker")
    async with app:
        stop = asyncio.Event()
        worker = asyncio.create_task(app.work(stop=stop))
        # a real failure of every claim: the table the queue lives in is gone for a while
        await app.store.execute_raw("ALTER TABLE codara_runs RENAME TO codara_runs_away")
        for _ in range(500):
            if sum("claiming failed" in r.message for r in caplog.records) >= 3:
                break
            await asyncio.sleep(0.02)
        assert not worker.done(), "the worker died with its store"
        await app.store.execute_raw("ALTER TABLE codara_runs_away RENAME TO codara_runs")
        run_id = await app.start_run("hello", "ops")
        record = await app.wait_run(run_id, timeout=60)
        stop.set()
        await worker
    failures = [r for r in caplog.records if "claiming failed" in r.message]
    assert len(failures) >= 3
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in failures)  # one line
    assert record.status == "completed"
    assert record.output == '"hello ops"'


async def test_a_run_the_store_failed_under_is_ready_again_after_the_handback_delay(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store failure that reaches the worker (here: recording the result) hands the run
    back ready in HANDBACK_DELAY seconds, like one met inside a step, not after a whole
    lease: a PostgreSQL restart must not park the runs it interrupted for 30 s."""
    clock = FakeClock()
    app = _app(db_url, clock, lease_seconds=30)
    executions: list[int] = []
    _register_crashy(app, executions)
    async with app:
        run_id = await app.start_run("crashy")
        real_finish = app.store.finish
        failures: list[str] = []

        async def finish_fails_once(*args: Any, **kwargs: Any) -> None:
            if not failures:
                failures.append(args[0])
                raise StoreUnavailableError("the database went away", hint="a test's fault")
            await real_finish(*args, **kwargs)

        monkeypatch.setattr(app.store, "finish", finish_fails_once)
        await app.work(until_idle=True)
        assert failures == [run_id]
        [(status, ready_at)] = await app.store.execute_raw(
            "SELECT status, ready_at FROM codara_runs WHERE id = ?", [run_id]
        )
        assert status == "queued"
        assert ready_at - clock() == pytest.approx(HANDBACK_DELAY)
        clock.advance(HANDBACK_DELAY)
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
    assert record.status == "completed"
    assert executions == [1]  # the step's journaled result was replayed, not run again


# -- 4. poison runs ---------------------------------------------------------------------------
async def _lapse_claims(app: codara.App, clock: FakeClock, run_id: str, times: int) -> None:
    """Claim the run ``times`` times as a worker that dies at once: its lease lapses."""
    for _ in range(times):
        claims = await app.store.claim("doomed", ["crashy@1"], 1, clock(), clock() + 5)
        assert [c.id for c in claims] == [run_id]
        clock.advance(6)


def _register_crashy(app: codara.App, executions: list[int]) -> None:
    @app.workflow(name="crashy")
    async def crashy(ctx: codara.Context, _: Any) -> str:
        def work() -> str:
            executions.append(1)
            return "ok"

        return await ctx.step("work", work)


async def test_a_run_whose_leases_lapse_max_claims_times_fails_as_poison(db_url: str) -> None:
    clock = FakeClock()
    app = _app(db_url, clock, max_claims=3, lease_seconds=5)
    executions: list[int] = []
    _register_crashy(app, executions)
    async with app:
        run_id = await app.start_run("crashy")
        await _lapse_claims(app, clock, run_id, 3)
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
        rows = await app.journal(run_id)
        report = await app.verify(run_id)
    assert executions == []  # failed at the claim, not executed a fourth time
    assert record.status == "failed"
    error = json.loads(record.error or "{}")
    assert error["type"] == "codara.errors.PoisonRunError"
    assert "3 times in a row" in error["message"]
    last = rows[-1]
    assert (last.op, last.kind, last.status) == (-1, "result", "failed")
    assert report.ok, report.problems


async def test_an_inline_resume_fails_a_poison_run_too(db_url: str) -> None:
    clock = FakeClock()
    app = _app(db_url, clock, max_claims=2, lease_seconds=5)
    executions: list[int] = []
    _register_crashy(app, executions)
    async with app:
        run_id = await app.start_run("crashy")
        await _lapse_claims(app, clock, run_id, 2)
        outcome = await app.resume(run_id)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error["type"].endswith("PoisonRunError")
    assert executions == []


async def test_clean_ends_reset_the_count_of_claims(db_url: str) -> None:
    """Hand-backs and parks are clean ends: a run that sleeps many times is no poison."""
    clock = FakeClock()
    app = _app(db_url, clock, max_claims=2, lease_seconds=5)
    executions: list[int] = []
    _register_crashy(app, executions)

    @app.workflow(name="napper")
    async def napper(ctx: codara.Context, _: Any) -> int:
        for i in range(5):
            await ctx.sleep(10, name=f"nap{i}")
        return 5

    async with app:
        crashy = await app.start_run("crashy")
        for _ in range(5):  # claimed and handed back, over and over
            (claim,) = await app.store.claim("polite", ["crashy@1"], 1, clock(), clock() + 5)
            await app.store.release(claim.id, claim.token, clock(), None, clock())
        napping = await app.start_run("napper")
        for _ in range(8):
            await app.work(until_idle=True)
            clock.advance(11)
        assert (await app.get_run(crashy)).status == "completed"
        assert (await app.get_run(napping)).status == "completed"
    assert executions == [1]


# -- 5. idempotency keys per workflow ---------------------------------------------------------
async def test_an_idempotency_key_with_another_input_is_a_conflict(db_url: str) -> None:
    app = _app(db_url)

    @app.workflow(name="order")
    async def order(ctx: codara.Context, data: dict[str, Any]) -> Any:
        return data

    @app.workflow(name="invoice")
    async def invoice(ctx: codara.Context, data: dict[str, Any]) -> Any:
        return data

    async with app:
        first = await app.start_run("order", {"item": "tea", "n": 2}, key="k-1")
        again = await app.start_run("order", {"n": 2, "item": "tea"}, key="k-1")  # same input
        with pytest.raises(ConflictError) as info:
            await app.start_run("order", {"item": "tea", "n": 3}, key="k-1")
        with pytest.raises(ConflictError):  # all or none: the batch's new run is not created
            await app.start_runs(
                "order", [{"item": "cake", "n": 1}, {"item": "tea", "n": 9}], keys=["k-2", "k-1"]
            )
        other = await app.start_run("invoice", {"item": "tea", "n": 3}, key="k-1")
        runs = await app.store.list_runs()
    assert again == first
    assert first in info.value.message
    assert "k-1" in info.value.message
    assert info.value.hint
    assert "new key" in info.value.hint
    assert other != first  # keys are scoped per workflow
    assert len(runs) == 2


# -- 6. retry and fork ------------------------------------------------------------------------
class Flaky:
    """A three-step workflow whose middle step fails while ``broken``; counts executions."""

    def __init__(self, app: codara.App) -> None:
        self.broken = True
        self.calls: list[str] = []

        def step(name: str) -> str:
            self.calls.append(name)
            if name == "b" and self.broken:
                raise RuntimeError("b is broken")
            return name

        @app.workflow(name="flaky")
        async def flaky(ctx: codara.Context, _: Any) -> list[str]:
            return [
                await ctx.step(codara.Step(n, retry=NO_RETRY), step, n) for n in ("a", "b", "c")
            ]


async def _failed_run(app: codara.App) -> tuple[Flaky, str]:
    flaky = Flaky(app)
    await app.open()
    run_id = await app.start_run("flaky")
    await app.work(until_idle=True)
    assert (await app.get_run(run_id)).status == "failed"
    return flaky, run_id


async def test_retry_queues_a_failed_run_and_journals_who_did_it(db_url: str) -> None:
    app = _app(db_url)
    try:
        _, run_id = await _failed_run(app)
        before = await app.journal(run_id)
        record = await app.retry(run_id, by="alice")
        rows = await app.journal(run_id)
        with pytest.raises(ConflictError, match="only a failed run"):
            await app.retry(run_id, by="alice")  # queued now: not again
        with pytest.raises(NotFoundError):
            await app.retry("no-such-run")
        report = await app.verify(run_id)
    finally:
        await app.close()
    assert record.status == "queued"
    assert record.ready_at is not None
    assert record.ready_at <= app.clock()
    assert record.error is None
    assert record.owner is None
    assert rows[: len(before)] == before  # append-only: nothing edited or deleted
    marker = rows[-1]
    assert (marker.seq, marker.op, marker.kind, marker.name) == (len(before), -3, "retry", "retry")
    assert marker.prev_hash == before[-1].hash
    assert json.loads(marker.input or "{}")["by"] == "alice"
    assert report.ok, report.problems


async def test_only_failed_runs_can_be_retried(db_url: str) -> None:
    app = _app(db_url)
    flaky = Flaky(app)
    flaky.broken = False
    async with app:
        run_id = await app.start_run("flaky")
        await app.work(until_idle=True)
        with pytest.raises(ConflictError, match="is completed") as info:
            await app.retry(run_id)
    assert info.value.hint
    assert "fork" in info.value.hint


async def test_a_retried_run_completes_without_running_its_good_steps_again(db_url: str) -> None:
    app = _app(db_url)
    try:
        flaky, run_id = await _failed_run(app)
        flaky.broken = False
        await app.retry(run_id, by="alice")
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
    finally:
        await app.close()
    assert record.status == "completed"
    assert flaky.calls == ["a", "b", "b", "c"]  # a ran once; the failed b again


async def test_fork_replays_the_journal_up_to_a_step_and_executes_from_there(
    db_url: str,
) -> None:
    app = _app(db_url)
    try:
        flaky, run_id = await _failed_run(app)
        source = await app.journal(run_id)
        flaky.broken = False
        new_id = await app.fork(run_id, from_step="b", by="bob")
        copied = await app.journal(new_id)
        report_before = await app.verify(new_id)
        await app.work(until_idle=True)
        record = await app.get_run(new_id)
        report = await app.verify()
        assert (await app.journal(run_id)) == source  # the source is untouched
    finally:
        await app.close()
    assert [(r.seq, r.op, r.kind, r.name) for r in copied] == [
        (0, 0, "step", "a"),
        (1, -2, "fork", "fork"),
    ]
    assert copied[0].output == source[0].output
    assert copied[0].run_id == new_id
    assert json.loads(copied[1].input or "{}") == {"from_run": run_id, "from_seq": 1, "by": "bob"}
    assert report_before.ok, report_before.problems
    assert record.status == "completed"
    assert record.output == '["a","b","c"]'
    assert flaky.calls == ["a", "b", "b", "c"]  # a was replayed in the fork, not executed
    assert report.ok, report.problems


async def test_fork_points_can_be_seq_numbers_and_bad_ones_are_clear_errors(
    db_url: str,
) -> None:
    app = _app(db_url)
    try:
        _, run_id = await _failed_run(app)
        by_seq = await app.fork(run_id, from_step="seq:0")
        with pytest.raises(InputError, match="no step named 'zz'") as info:
            await app.fork(run_id, from_step="zz")
        with pytest.raises(InputError, match="no operation at 'seq:9'"):
            await app.fork(run_id, from_step="seq:9")
        with pytest.raises(NotFoundError):
            await app.fork("no-such-run", from_step="a")
        rows = await app.journal(by_seq)
        runs = await app.store.list_runs()
    finally:
        await app.close()
    assert "its steps: a, b" in info.value.message
    assert [r.kind for r in rows] == ["fork"]
    assert len(runs) == 2


async def test_retry_and_fork_rows_are_keyed_when_the_audit_key_is_set(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CODARA_AUDIT_KEY, the rows retry and fork write are HMAC-keyed like every other
    row: unkeyed ones would read as a downgrade to `audit verify`."""
    monkeypatch.setenv("CODARA_AUDIT_KEY", "k" * 32)
    app = _app(db_url)
    try:
        flaky, run_id = await _failed_run(app)
        flaky.broken = False
        new_id = await app.fork(run_id, from_step="b", by="bob")
        await app.retry(run_id, by="ann")
        await app.work(until_idle=True)
        report = await app.verify(require_key=True)
        assert (await app.get_run(run_id)).status == "completed"
        assert (await app.get_run(new_id)).status == "completed"
    finally:
        await app.close()
    assert report.ok, report.problems


async def test_a_database_url_given_beside_settings_is_used(tmp_path: Path) -> None:
    # App(url, settings=...) used to drop the URL silently and open [store] url instead
    from codara.config import load_settings

    settings = load_settings(overrides={"store": {"url": f"sqlite:///{tmp_path / 'a.db'}"}})
    app = codara.App(f"sqlite:///{tmp_path / 'b.db'}", settings=settings, durability="os")
    assert app.settings.store.url == f"sqlite:///{tmp_path / 'b.db'}"
    assert app.settings.store.durability == "os"
    async with app:
        assert app.store.url_redacted.endswith("b.db")
    assert (tmp_path / "b.db").exists()
    assert not (tmp_path / "a.db").exists()
