"""Several ``codara worker`` processes on one PostgreSQL share the runs: none is lost and
none executed twice (``FOR UPDATE SKIP LOCKED`` claims, fenced writes).

Two worker processes share 200 runs; each run's last step writes a row outside the journal
(``tests/engine/shared_app.py``), so a run executed twice would show two rows. Nothing here is
timed; ``benchmarks/scale.py`` measures runs/s for 1, 2 and 4 processes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

import codara

HERE = Path(__file__).resolve().parent
RUNS = 200
WORKERS = 2
GUARD = 120.0  # seconds before a hung test fails


def _listening(url: str) -> int:
    """Worker processes up and idle: each holds one connection LISTENing for wake-ups."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND (query LIKE 'LISTEN%' OR query = 'SELECT 1') AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


async def test_two_worker_processes_share_200_runs_none_lost_none_twice(
    pg_url: str, tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location("shared_app", HERE / "shared_app.py")
    assert spec is not None
    assert spec.loader is not None
    shared_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared_app)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(shared_app.EFFECTS_DDL)
    app = codara.App(pg_url)
    app.workflow(name="shared")(shared_app.shared)
    env = dict(os.environ, CODARA_DATABASE_URL=pg_url)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    env.pop("CODARA_CONFIG", None)
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(WORKERS)]  # noqa: SIM115
    async with app:
        command = [sys.executable, "-m", "codara", "--app", "shared_app:app", "worker", "-n", "8"]
        procs = [
            subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)
            for log in logs
        ]
        try:
            deadline = time.monotonic() + GUARD
            while _listening(pg_url) < WORKERS:
                assert all(p.poll() is None for p in procs), "a worker exited"
                assert time.monotonic() < deadline, "the workers did not come up"
                await asyncio.sleep(0.1)
            ids = await app.start_runs("shared", [None] * RUNS)
            while (await app.store.count_runs()).get("completed", 0) < RUNS:
                assert all(p.poll() is None for p in procs), "a worker exited"
                assert time.monotonic() < deadline, "the runs did not complete"
                await asyncio.sleep(0.1)
            assert await app.store.count_runs() == {"completed": RUNS}
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=60)
            for log in logs:
                log.close()
    assert all(p.returncode == 0 for p in procs), [
        (tmp_path / f"worker{i}.log").read_text() for i in range(WORKERS)
    ]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT run_id, pid FROM shared_effects").fetchall()
    executed = [run_id for run_id, _ in rows]
    assert sorted(executed) == sorted(ids), "each run's effect exactly once: none lost, none twice"
    pids = {pid for _, pid in rows}
    assert pids == {p.pid for p in procs}, "both worker processes executed runs"
