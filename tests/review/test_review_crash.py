"""A worker killed while 1,000 runs wait for review loses none; each resumes exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from review_worker import LEDGER, build

from codara.review import Principal, Reviews

HERE = Path(__file__).parent
RUNS = 1000


def _worker(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CODARA_LEASE_SECONDS": "2", "CODARA_POLL_INTERVAL": "0.05"}
    return subprocess.Popen(
        [sys.executable, str(HERE / "review_worker.py"), url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _count(app_store: object, sql: str) -> int:
    rows = await app_store.execute_raw(sql)  # type: ignore[attr-defined]
    return int(rows[0][0])


@pytest.mark.crash
@pytest.mark.slow
async def test_killed_worker_loses_no_waiting_run(db_url: str) -> None:
    app = build(db_url)
    async with app:
        await app.store.execute_raw(LEDGER)
        ids = await app.start_runs("checked", list(range(RUNS)))
        kills = 0
        worker = _worker(db_url)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                waiting = await _count(
                    app.store, "SELECT COUNT(*) FROM codara_runs WHERE status = 'waiting'"
                )
                if waiting >= RUNS:
                    break
                if kills < 3 and waiting >= (kills + 1) * RUNS // 4:
                    worker.send_signal(signal.SIGKILL)  # mid-way through parking runs
                    worker.wait()
                    kills += 1
                    worker = _worker(db_url)
                await asyncio.sleep(0.1)
            assert waiting == RUNS, f"only {waiting} of {RUNS} runs reached their review"
            # Kill the worker while every run waits; none may be lost.
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += 1
            assert kills >= 2

            reviews = Reviews(app.store, app.clock)
            checker = Principal("pat", frozenset({"checker"}))
            items = await reviews.queue(checker, limit=RUNS + 10)
            assert len(items) == RUNS
            assert {i.run_id for i in items} == set(ids)
            for n, item in enumerate(items):
                if n % 2:
                    await reviews.approve(checker, item.id)
                else:
                    await reviews.reject(checker, item.id, "not_ok")
            worker = _worker(db_url)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                done = await _count(
                    app.store, "SELECT COUNT(*) FROM codara_runs WHERE status = 'completed'"
                )
                if done >= RUNS:
                    break
                await asyncio.sleep(0.2)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        assert done == RUNS
        ledger = await app.store.execute_raw(
            "SELECT run_id, COUNT(*) FROM review_ledger GROUP BY run_id HAVING COUNT(*) <> 1"
        )
        assert ledger == [], "each run resumed exactly once"
        assert await _count(app.store, "SELECT COUNT(*) FROM review_ledger") == RUNS
        outcomes = await app.store.execute_raw(
            "SELECT output, COUNT(*) FROM codara_runs GROUP BY output ORDER BY output"
        )
        assert outcomes == [('"approved"', RUNS // 2), ('"rejected"', RUNS // 2)]
        assert (await app.verify()).ok
