"""Concurrency: one step of one run never executes twice at once, and a stale owner is fenced.

The process test runs three real worker processes on one database; every step logs its
execution interval from a separate autocommit connection (outside the journal transaction,
so that two executions would both be visible). The in-process tests take a lease away from
an owner by hand and check that the store refuses everything the old owner still tries.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

import codara
from codara.engine import RetryPolicy
from codara.store import FencedError, JournalRecord, Tx
from codara.trace import row_hash

HERE = Path(__file__).resolve().parent


def _load_worker_module() -> Any:
    spec = importlib.util.spec_from_file_location("codara_crash_worker", HERE / "crash_worker.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crash_worker = _load_worker_module()


# -- real processes ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_worker_processes_never_run_one_step_twice_at_once(
    db_url: str, tmp_path: Path
) -> None:
    runs, steps, workers = 120, 10, 3
    app = codara.App(db_url, durability="os")
    crash_worker.register(app)
    fleet = None
    async with app:
        await app.store.execute_raw(crash_worker.STEP_LOG_DDL)
        ids = await app.start_runs("overlap", [steps] * runs)
        try:
            # a long lease: in this test no lease may lapse, so no step may run twice at all
            fleet = crash_worker.Fleet(db_url, tmp_path, "--lease", "30", "--poll", "0.01")
            for _ in range(workers):
                fleet.start()
            deadline = time.monotonic() + 180
            while (await app.store.count_runs()).get("completed", 0) < runs:
                fleet.check()
                assert not fleet.exited, f"a worker exited by itself:\n{fleet.tail()}"
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"not all runs completed after 180 s: {await app.store.count_runs()}"
                        f"\n{fleet.tail()}",
                        pytrace=False,
                    )
                await asyncio.sleep(0.1)
        finally:
            if fleet is not None:
                fleet.close()

        rows = await app.store.execute_raw(
            "SELECT run_id, step, pid, started, ended FROM step_log ORDER BY started"
        )
        by_step: dict[tuple[str, int], list[tuple[float, float, int]]] = defaultdict(list)
        for run_id, step, pid, started, ended in rows:
            by_step[(str(run_id), int(step))].append((float(started), float(ended), int(pid)))
        overlaps = []
        for key, spans in by_step.items():
            spans.sort()
            for (s1, e1, p1), (s2, e2, p2) in itertools.pairwise(spans):
                if s2 < e1:
                    overlaps.append((key, (p1, s1, e1), (p2, s2, e2)))
        assert not overlaps, f"{len(overlaps)} steps ran twice at once, e.g. {overlaps[:3]}"

        executions = Counter({key: len(spans) for key, spans in by_step.items()})
        twice = {k: n for k, n in executions.items() if n > 1}
        missing = {(r, s) for r in ids for s in range(steps)} - set(executions)
        assert not twice, f"{len(twice)} steps ran more than once: {list(twice.items())[:5]}"
        assert not missing, f"{len(missing)} steps never ran: {sorted(missing)[:5]}"

        records = [await app.get_run(run_id) for run_id in ids]
        assert Counter(r.status for r in records) == {"completed": runs}
        assert {r.attempts for r in records} == {1}  # claimed once each: nobody stole a run
        assert {await app.output(run_id) for run_id in ids} == {steps}
        # each run ran in one process, and the processes really shared the work
        pids_per_run: dict[str, set[int]] = defaultdict(set)
        for (run_id, _), spans in by_step.items():
            pids_per_run[run_id].update(pid for _, _, pid in spans)
        assert all(len(p) == 1 for p in pids_per_run.values())
        assert len({pid for p in pids_per_run.values() for pid in p}) >= 2
        report = await app.verify()
        assert report.ok, report.problems[:5]


# -- one process: fencing -----------------------------------------------------------------------
def _row(
    run_id: str, seq: int, op: int, prev: str, name: str, output: str, kind: str = "step"
) -> JournalRecord:
    status = "ok" if kind == "step" else name
    t = time.time()
    h = row_hash(prev, run_id, seq, op, kind, name, status, None, output, None, t, t, 1)
    return JournalRecord(run_id, seq, op, kind, name, status, None, output, None, t, t, 1, prev, h)


async def test_a_stale_owner_cannot_write_once_another_worker_claimed_the_run(
    app: codara.App,
) -> None:
    @app.workflow(name="w")
    async def w(ctx: codara.Context, _: None) -> None:
        return None

    store = app.store
    await store.execute_raw("CREATE TABLE effects_t (v TEXT)")
    run_id = await app.start_run("w")
    genesis = (await app.get_run(run_id)).genesis_hash
    now = time.time()
    # worker A claims with a lease that has already run out (it stopped heartbeating)
    [a] = await store.claim("worker-a", ["w@1"], 10, now, now - 5)
    assert a.id == run_id
    [b] = await store.claim("worker-b", ["w@1"], 10, now, now + 60)
    assert b.id == run_id
    assert b.token > a.token
    assert await store.claim("worker-c", ["w@1"], 10, now, now + 60) == []  # B's lease holds

    with pytest.raises(FencedError):
        await store.append(run_id, a.token, _row(run_id, 0, 0, genesis, "s0", '"a"'))
    first = _row(run_id, 0, 0, genesis, "s0", '"b"')
    await store.append(run_id, b.token, first)
    with pytest.raises(FencedError):  # the same seq again
        await store.append(run_id, a.token, _row(run_id, 0, 0, genesis, "s0", '"a"'))
    with pytest.raises(FencedError):  # the next seq
        await store.append(run_id, a.token, _row(run_id, 1, 1, first.hash, "s1", '"a"'))

    async def effect(tx: Tx) -> str:
        await tx.execute("INSERT INTO effects_t (v) VALUES (:v)", {"v": "a"})
        return "a"

    with pytest.raises(FencedError):
        await store.transaction(
            run_id, a.token, effect, lambda out: _row(run_id, 1, 1, first.hash, "s1", '"a"')
        )
    assert await store.execute_raw("SELECT COUNT(*) FROM effects_t") == [(0,)]  # rolled back

    result = _row(run_id, 1, -1, first.hash, "completed", '"a"', kind="result")
    with pytest.raises(FencedError):
        await store.finish(run_id, a.token, "completed", '"a"', None, result, time.time())
    with pytest.raises(FencedError):
        await store.suspend(run_id, a.token, "sleeping", now + 10, None, a.signal_version, now)
    await store.release(run_id, a.token, now, "from a", now)  # a no-op for a stale token
    assert await store.heartbeat("worker-a", [run_id], now + 60, now) == set()

    record = await app.get_run(run_id)
    assert (record.status, record.owner, record.token) == ("running", "worker-b", b.token)
    assert await store.heartbeat("worker-b", [run_id], now + 60, now) == {run_id}

    done = _row(run_id, 1, -1, first.hash, "completed", '"b"', kind="result")
    await store.finish(run_id, b.token, "completed", '"b"', None, done, time.time())
    assert await app.output(run_id) == "b"
    assert [(r.seq, r.output) for r in await app.journal(run_id)] == [(0, '"b"'), (1, '"b"')]
    assert (await app.verify(run_id)).ok


async def test_an_expired_lease_is_taken_over_and_the_old_owner_is_refused(
    db_url: str,
) -> None:
    class Clock:
        now = 1_800_000_000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    app = codara.App(db_url, durability="os", clock=clock, retry=RetryPolicy(initial_delay=0.001))
    calls: Counter[int] = Counter()
    stalled = asyncio.Event()
    wake = asyncio.Event()

    async def work(i: int) -> int:
        calls[i] += 1
        if i == 1 and calls[i] == 1:  # the first owner stalls in step 1 (a long GC pause...)
            stalled.set()
            await wake.wait()
        return i * 10

    @app.workflow(name="w")
    async def w(ctx: codara.Context, n: int) -> list[int]:
        return [await ctx.step(f"s{i}", work, i) for i in range(n)]

    async with app:
        run_id = await app.start_run("w", 3)
        old_owner = asyncio.create_task(app.resume(run_id))
        await asyncio.wait_for(stalled.wait(), 30)
        assert (await app.get_run(run_id)).status == "running"
        assert await app.work(until_idle=True) == 0  # the lease holds: nothing to take

        clock.now += app.settings.worker.lease_seconds + 1  # no heartbeat: the lease lapses
        assert await app.work(until_idle=True) == 1  # another worker takes it and finishes
        record = await app.get_run(run_id)
        assert (record.status, record.attempts) == ("completed", 2)
        assert await app.output(run_id) == [0, 10, 20]

        wake.set()  # the old owner wakes up and tries to journal step 1
        outcome = await asyncio.wait_for(old_owner, 30)
        assert outcome.status == "lost"
        assert await app.output(run_id) == [0, 10, 20]
        rows = await app.journal(run_id)
        assert [(r.name, r.status) for r in rows] == [
            ("s0", "ok"),
            ("s1", "ok"),
            ("s2", "ok"),
            ("completed", "completed"),
        ]
        assert calls == {0: 1, 1: 2, 2: 1}  # s0 replayed; s1 ran twice but journaled once
        assert (await app.verify()).ok
