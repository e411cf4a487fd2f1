"""Crash test: real worker processes SIGKILLed at random moments lose and duplicate nothing.

Every step of the ``ledger`` workflow is a ``ctx.transaction`` appending one row to a table
without a unique constraint, so a step that ran twice would leave two rows: the ledger must
hold exactly one row per (run, step) however often the workers die. The ``idem`` variant
runs plain steps whose external effect carries an idempotency key: steps run at least once,
the keyed effect lands exactly once.

The workers are ``tests/engine/crash_worker.py`` processes (concurrency 8, 2 s lease). A
seeded random schedule SIGKILLs one of them at random moments and starts a replacement each
time. The moments are drawn as points of progress (the fraction of journal rows written),
not of time, so that the kills spread over the whole execution however fast or loaded the
machine is; only a worker that owns running runs is a victim, so every kill interrupts work
in flight. Reproduce a schedule with ``CODARA_CRASH_SEED``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import codara

HERE = Path(__file__).resolve().parent
WORKER_SCRIPT = HERE / "crash_worker.py"
LEASE_SECONDS = 2.0
SEED = int(os.environ.get("CODARA_CRASH_SEED", "20240601"))

pytestmark = [pytest.mark.crash, pytest.mark.slow, pytest.mark.timeout(600)]


def _load_worker_module() -> Any:
    spec = importlib.util.spec_from_file_location("codara_crash_worker", WORKER_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crash_worker = _load_worker_module()


@dataclass
class Chaos:
    kills: int = 0
    runs_interrupted: int = 0  # sum over kills of the runs the victim owned
    seconds: float = 0.0


async def _running_by_pid(app: codara.App) -> dict[int, int]:
    """Running runs per worker pid (worker ids are host:pid:random)."""
    rows = await app.store.execute_raw(
        "SELECT owner, COUNT(*) FROM codara_runs WHERE status = 'running' AND owner IS NOT NULL "
        "GROUP BY owner"
    )
    owned: dict[int, int] = {}
    for owner, n in rows:
        parts = str(owner).rsplit(":", 2)
        if len(parts) == 3 and parts[1].isdigit():
            owned[int(parts[1])] = owned.get(int(parts[1]), 0) + int(n)
    return owned


async def _diagnostic(app: codara.App, fleet: Any, chaos: Chaos) -> str:
    counts = await app.store.count_runs()
    stuck = await app.store.execute_raw(
        "SELECT id, status, owner, token, attempts, ready_at FROM codara_runs "
        "WHERE status <> 'completed' ORDER BY id LIMIT 10"
    )
    return (
        f"counts by status: {counts}; kills={chaos.kills}; "
        f"workers started={fleet.started}, exited by themselves={fleet.exited}\n"
        f"unfinished runs (first 10): {stuck}\n--- worker stderr (tail) ---\n{fleet.tail()}"
    )


async def _progress(app: codara.App, rows_expected: int) -> float:
    rows = await app.store.execute_raw("SELECT COUNT(*) FROM codara_journal")
    return int(rows[0][0]) / rows_expected


async def _run_with_chaos(
    app: codara.App,
    fleet: Any,
    total: int,
    steps: int,
    *,
    workers: int,
    kills: int,
    rng: random.Random,
    deadline_s: float,
) -> Chaos:
    """Keep ``workers`` processes running and SIGKILL one at ``kills`` random points of
    progress (replacing it each time), until all ``total`` runs are completed or
    ``deadline_s`` passes."""
    chaos = Chaos()
    marks = sorted(rng.uniform(0.02, 0.85) for _ in range(kills))
    t0 = time.monotonic()
    for _ in range(workers):
        fleet.start()
    try:
        while True:
            fleet.check()
            if fleet.exited:
                pytest.fail(
                    "a worker exited by itself\n" + await _diagnostic(app, fleet, chaos),
                    pytrace=False,
                )
            counts = await app.store.count_runs()
            if counts.get("completed", 0) == total:
                break
            if time.monotonic() - t0 > deadline_s:
                pytest.fail(
                    f"runs not all completed after {deadline_s:.0f} s\n"
                    + await _diagnostic(app, fleet, chaos),
                    pytrace=False,
                )
            await asyncio.sleep(rng.uniform(0.02, 0.1))
            if chaos.kills >= kills:
                continue
            if await _progress(app, total * (steps + 1)) < marks[chaos.kills]:
                continue
            owned = await _running_by_pid(app)
            busy = sorted(pid for pid in fleet.pids if owned.get(pid, 0) > 0)
            if not busy:  # the replacements are still starting up
                continue
            victim = rng.choice(busy)
            fleet.kill(victim)
            chaos.kills += 1
            chaos.runs_interrupted += owned[victim]
            fleet.start()
    finally:
        chaos.seconds = time.monotonic() - t0
        fleet.close()
    return chaos


async def _open_app(url: str) -> codara.App:
    app = codara.App(url, durability="os")
    crash_worker.register(app)
    await app.open()
    for ddl in crash_worker.SIDE_TABLES:
        await app.store.execute_raw(ddl)
    return app


def _report(name: str, url: str, chaos: Chaos, fleet: Any, extra: str = "") -> None:
    lost = fleet.log_text().count("lease lost")
    print(
        f"\n[{name} on {url.split(':')[0]}] seed={SEED} {chaos.seconds:.1f} s, "
        f"kills={chaos.kills} (all in flight, {chaos.runs_interrupted} runs interrupted), "
        f"workers started={fleet.started}, lease-lost warnings={lost}{extra}"
    )


async def _assert_not_vacuous(app: codara.App, chaos: Chaos) -> int:
    """Workers died with work in flight, and runs were resumed by other workers."""
    assert chaos.kills >= 5, f"only {chaos.kills} kills: the schedule interrupted too little"
    rows = await app.store.execute_raw("SELECT COUNT(*) FROM codara_runs WHERE attempts > 1")
    resumed = int(rows[0][0])
    assert resumed > 0, "no run was ever claimed twice: the kills interrupted nothing"
    return resumed


def _assert_workers_healthy(fleet: Any) -> None:
    """The survivors logged no error: a store failure in a worker is a bug too."""
    text = fleet.log_text()
    assert "Traceback" not in text, f"a worker logged an error:\n{fleet.tail()}"


async def _assert_journals(app: codara.App, ids: list[str], kind: str, steps: int) -> None:
    expected = [(i, i, kind, f"s{i}", "ok") for i in range(steps)]
    expected.append((steps, -1, "result", "completed", "completed"))
    bad: dict[str, list[tuple[int, int, str, str, str]]] = {}
    for run_id in ids:
        got = [(r.seq, r.op, r.kind, r.name, r.status) for r in await app.journal(run_id)]
        if got != expected:
            bad[run_id] = got
    assert not bad, (
        f"{len(bad)} journals are not {steps} steps + result, e.g. {next(iter(bad.items()))}"
    )


async def _assert_verified(app: codara.App, total: int) -> None:
    report = await app.verify()
    assert report.ok, f"audit problems: {report.problems[:10]}"
    assert report.runs_checked == total


async def test_killed_workers_execute_every_transaction_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    runs, steps = 200, 20
    app = await _open_app(db_url)
    fleet = None
    try:
        fleet = crash_worker.Fleet(db_url, tmp_path, "--lease", str(LEASE_SECONDS))
        ids = await app.start_runs("ledger", [steps] * runs)
        chaos = await _run_with_chaos(
            app, fleet, runs, steps, workers=3, kills=20, rng=random.Random(SEED),
            deadline_s=240,
        )  # fmt: skip
        # every run completed with the number of steps it took
        records = [await app.get_run(run_id) for run_id in ids]
        assert Counter(r.status for r in records) == {"completed": runs}
        assert {await app.output(run_id) for run_id in ids} == {steps}

        # the ledger: each (run, step) exactly once
        rows = await app.store.execute_raw("SELECT run_id, step FROM ledger")
        seen = Counter((str(run_id), int(step)) for run_id, step in rows)
        duplicates = {k: n for k, n in seen.items() if n > 1}
        missing = {(r, s) for r in ids for s in range(steps)} - set(seen)
        assert not duplicates, f"{len(duplicates)} steps ran twice, e.g. {list(duplicates)[:5]}"
        assert not missing, f"{len(missing)} steps never ran, e.g. {sorted(missing)[:5]}"
        assert len(rows) == runs * steps

        await _assert_verified(app, runs)
        await _assert_journals(app, ids, "transaction", steps)

        resumed = await _assert_not_vacuous(app, chaos)
        _assert_workers_healthy(fleet)
        writers = await app.store.execute_raw("SELECT COUNT(DISTINCT worker) FROM ledger")
        _report(
            "ledger", db_url, chaos, fleet,
            f", runs resumed={resumed}, ledger writers={writers[0][0]}",
        )  # fmt: skip
    finally:
        if fleet is not None:
            fleet.close()
        await app.close()


async def test_killed_workers_take_keyed_effects_exactly_once(db_url: str, tmp_path: Path) -> None:
    runs, steps = 50, 20
    app = await _open_app(db_url)
    fleet = None
    try:
        fleet = crash_worker.Fleet(db_url, tmp_path, "--lease", str(LEASE_SECONDS))
        ids = await app.start_runs("idem", [steps] * runs)
        chaos = await _run_with_chaos(
            app, fleet, runs, steps, workers=3, kills=12, rng=random.Random(SEED + 1),
            deadline_s=240,
        )  # fmt: skip
        records = [await app.get_run(run_id) for run_id in ids]
        assert Counter(r.status for r in records) == {"completed": runs}
        assert {await app.output(run_id) for run_id in ids} == {steps}

        keys = [str(k) for (k,) in await app.store.execute_raw("SELECT key FROM effects")]
        expected = {f"{run_id}:{i}" for run_id in ids for i in range(steps)}
        assert not expected - set(keys), f"effects missing: {sorted(expected - set(keys))[:5]}"
        assert sorted(keys) == sorted(expected)  # each exactly once
        attempts = Counter(
            str(k) for (k,) in await app.store.execute_raw("SELECT key FROM effect_attempts")
        )
        assert set(attempts) == expected  # every effect attempted, none invented
        # at least once: a step may run again after a kill, but never took effect twice
        repeated = sum(n - 1 for n in attempts.values())

        await _assert_verified(app, runs)
        await _assert_journals(app, ids, "step", steps)
        resumed = await _assert_not_vacuous(app, chaos)
        _assert_workers_healthy(fleet)
        _report(
            "idem", db_url, chaos, fleet,
            f", runs resumed={resumed}, effects re-attempted={repeated}",
        )  # fmt: skip
    finally:
        if fleet is not None:
            fleet.close()
        await app.close()
