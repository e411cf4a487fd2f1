"""Resume latency and parked-run memory: what a decision costs until the run moves on.

    python -m benchmarks.resume_latency                      # SQLite and PostgreSQL, full
    python -m benchmarks.resume_latency --quick              # a smoke run
    python -m benchmarks.resume_latency --database postgresql --runs 200 --reps 3 --output f.json

``resume_latency``: one ``codara worker`` runs in a subprocess (as in production: it loads
this module's ``app``), and then once more inside this process (``InProcessWorker``: the API
and a worker sharing a process, woken without a poll or a round trip). ``--runs`` runs each
park on a review (``ReviewGate.check``; or on ``ctx.wait_for`` with ``--mode signal``). This
process then decides them one by one at random moments (gaps of 10-60 ms, independent of the
worker's poll phase): ``Reviews.approve`` (or ``App.send_signal``). The resumed run's next
step returns ``time.time()``, journaled as its output; the latency of a decision is that
stamp minus the time just before the decision call (so it includes the decision's own
commit). Per repetition p50 and p99 of the ``--runs`` latencies; the rows give the median,
min and max of those over ``--reps`` repetitions.

``worker_memory``: a fresh worker, warmed up with 100 runs that wait and resume; its VmRSS,
open file descriptors and threads (``/proc/<pid>/status``, ``/proc/<pid>/fd``) once idle,
then once ``--park`` (100,000) more runs have parked on a signal. A parked run should cost a
row in the database and nothing in the worker.

``run(quick)`` returns the rows for ``benchmarks/latest.json``; the command prints them.
PostgreSQL: a fresh database on ``$CODARA_BENCH_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``), dropped afterwards; skipped if unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import codara
from codara.config import load_settings
from codara.review import Principal, ReviewGate, Reviews, load_policies

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG_URL = os.environ.get("CODARA_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
APP_SPEC = "benchmarks.resume_latency:app"
OPERATOR = Principal("bench", frozenset({"admin"}))
CONCURRENCY = 16

# -- the workflows the worker subprocess runs --------------------------------------------------
app = codara.App()
_gate = ReviewGate(
    load_policies(
        {
            "policy_input": {"amount": "double"},
            "policies": [
                {"name": "always", "when": "amount > 0.0", "outcome": "ask", "role": "ops"}
            ],
        },
        workflow="bench_review",
    ),
    workflow="bench_review",
)


@app.workflow(name="bench_signal")
async def bench_signal(ctx: codara.Context, _: Any) -> float:
    await ctx.wait_for("go")
    return await ctx.step("stamp", time.time)


@app.workflow(name="bench_review")
async def bench_review(ctx: codara.Context, _: Any) -> float:
    result = await _gate.check(ctx, "act", {"amount": 1000.0}, inputs={"amount": 1000.0})
    assert result.go_ahead
    return await ctx.step("stamp", time.time)


WORKFLOW = {"signal": "bench_signal", "review": "bench_review"}


def _bench_app(url: str, durability: str) -> codara.App:
    """This process's App on the benchmark database, with the same workflows (to start runs)."""
    bench = codara.App(url, durability=durability)
    bench.workflow(name="bench_signal")(bench_signal)
    bench.workflow(name="bench_review")(bench_review)
    return bench


# -- databases and the worker process ---------------------------------------------------------
@dataclass(frozen=True)
class Target:
    database: str  # sqlite | postgresql
    durability: str  # fsync | os (SQLite); PostgreSQL runs at the server's defaults: "fsync"


def _pg_available(admin_url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(admin_url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure: skip PostgreSQL
        return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return None


@contextmanager
def fresh_database(target: Target, pg_admin_url: str) -> Iterator[str]:
    """A URL of an empty database, removed afterwards."""
    if target.database == "sqlite":
        folder = tempfile.mkdtemp(prefix="codara-resume-")
        try:
            yield f"sqlite:///{folder}/bench.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    import psycopg

    name = f"bench_resume_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_admin_url.rpartition("/")[0] + "/" + name
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class InProcessWorker:
    """A worker in this process, on the benchmark App's own store: decisions and starts wake
    it in-process (``codara.store._local_wake``), as when the API and a worker share one."""

    def __init__(self, bench: codara.App) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(bench.worker(concurrency=CONCURRENCY).run(stop=self.stop))

    def check(self) -> None:
        if self.task.done():
            self.task.result()
            raise RuntimeError("the in-process worker stopped")

    async def close(self) -> None:
        self.stop.set()
        await self.task


class WorkerProcess:
    """``python -m codara --app benchmarks.resume_latency:app worker`` on ``url``."""

    def __init__(self, url: str, durability: str) -> None:
        env = dict(os.environ)
        env.update(
            CODARA_DATABASE_URL=url,
            CODARA_DURABILITY=durability,
            PYTHONPATH=os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p),
        )
        env.pop("CODARA_CONFIG", None)
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codara", "--app", APP_SPEC, "worker", "-n", str(CONCURRENCY),
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip

    def check(self) -> None:
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise RuntimeError(f"the worker exited ({self.proc.returncode}):\n{self.log.read()}")

    def _status(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc")

    def rss_mb(self) -> float:
        return self._status("VmRSS") / 1024.0

    def threads(self) -> int:
        return self._status("Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # graceful: hands back claimed runs
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- measuring ---------------------------------------------------------------------------------
async def _wait_status(
    bench: codara.App, worker: WorkerProcess, workflow: str, status: str, count: int, limit: float
) -> None:
    deadline = time.monotonic() + limit
    while True:
        have = (await bench.store.count_runs(workflow=workflow)).get(status, 0)
        if have >= count:
            return
        worker.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {have} of {count} {workflow} runs are {status}")
        await asyncio.sleep(0.1)


async def _start(bench: codara.App, workflow: str, n: int) -> list[str]:
    ids: list[str] = []
    for i in range(0, n, 1000):
        ids += await bench.start_runs(workflow, [None] * min(1000, n - i))
    return ids


async def _decide_all(
    bench: codara.App, worker: WorkerProcess, mode: str, runs: int
) -> list[float]:
    """Park ``runs`` runs, decide each at a random moment; the latencies in ms."""
    workflow = WORKFLOW[mode]
    done_before = (await bench.store.count_runs(workflow=workflow)).get("completed", 0)
    ids = await _start(bench, workflow, runs)
    await _wait_status(bench, worker, workflow, "waiting", runs, 600)
    reviews = Reviews(bench.store, time.time)
    review_of: dict[str, str] = {}
    if mode == "review":
        for item in await reviews.queue(OPERATOR, limit=runs + 10):
            review_of[item.run_id] = item.id
    order = list(ids)
    random.shuffle(order)
    sent: dict[str, float] = {}
    for run_id in order:
        await asyncio.sleep(random.uniform(0.01, 0.06))
        t0 = time.time()
        if mode == "review":
            await reviews.approve(OPERATOR, review_of[run_id])
        else:
            await bench.send_signal(run_id, "go", None)
        sent[run_id] = t0
    await _wait_status(bench, worker, workflow, "completed", done_before + runs, 600)
    latencies = []
    for run_id in ids:
        stamp = float(await bench.output(run_id))
        latencies.append((stamp - sent[run_id]) * 1000.0)
    return latencies


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def _latency(
    url: str, target: Target, mode: str, runs: int, reps: int, inprocess: bool = False
) -> dict[str, Any]:
    bench = _bench_app(url, target.durability)
    async with bench:  # creates the schema before the worker (which only checks it) starts
        worker: Any = InProcessWorker(bench) if inprocess else WorkerProcess(url, target.durability)
        try:
            await _decide_all(bench, worker, mode, min(runs, 20))  # warm-up, not counted
            p50s, p99s, pooled = [], [], []
            for _ in range(reps):
                samples = await _decide_all(bench, worker, mode, runs)
                p50s.append(_percentile(samples, 0.50))
                p99s.append(_percentile(samples, 0.99))
                pooled += samples
        finally:
            if inprocess:
                await worker.close()
            else:
                worker.stop()
    return {"p50": p50s, "p99": p99s, "pooled": pooled}


async def _rss_samples(worker: WorkerProcess, n: int = 3) -> list[float]:
    samples = []
    for _ in range(n):
        samples.append(worker.rss_mb())
        await asyncio.sleep(0.3)
    return samples


def _descriptors(worker: WorkerProcess) -> dict[str, int]:
    return {"fds": worker.fds(), "threads": worker.threads()}


async def _memory(url: str, target: Target, park: int) -> dict[str, Any]:
    bench = _bench_app(url, target.durability)
    async with bench:
        worker = WorkerProcess(url, target.durability)
        try:
            await _decide_all(bench, worker, "signal", 100)  # warm-up: every code path once
            await asyncio.sleep(2.0)
            idle = await _rss_samples(worker)
            idle_fds = _descriptors(worker)
            started = time.monotonic()
            await _start(bench, "bench_signal", park)
            await _wait_status(bench, worker, "bench_signal", "waiting", park, 3600)
            park_seconds = time.monotonic() - started
            await asyncio.sleep(2.0)
            parked = await _rss_samples(worker)
            parked_fds = _descriptors(worker)
        finally:
            worker.stop()
    return {"idle": idle, "parked": parked, "park_seconds": park_seconds,
            "idle_fds": idle_fds, "parked_fds": parked_fds}  # fmt: skip


def _row(workload: str, system: str, target: Target, samples: list[float], unit: str,
         how: str) -> dict[str, Any]:  # fmt: skip
    return {
        "workload": workload,
        "system": system,
        "database": target.database,
        "durability": target.durability,
        "median": round(statistics.median(samples), 2),
        "min": round(min(samples), 2),
        "max": round(max(samples), 2),
        "unit": unit,
        "reps": len(samples),
        "how": how,
    }


def measure(
    targets: list[Target],
    *,
    mode: str = "review",
    runs: int = 200,
    reps: int = 3,
    park: int = 100_000,
    memory: bool = True,
    latency: bool = True,
    inprocess: bool = True,
    pg_admin_url: str = DEFAULT_PG_URL,
    log: Any = None,
) -> list[dict[str, Any]]:
    def say(text: str) -> None:
        if log is not None:
            print(text, file=log, flush=True)

    rows: list[dict[str, Any]] = []
    pg_problem: str | None = None
    if any(t.database == "postgresql" for t in targets):
        pg_problem = _pg_available(pg_admin_url)
    for target in targets:
        label = f"{target.database}/{target.durability}"
        if target.database == "postgresql" and pg_problem:
            say(f"skip {label}: PostgreSQL unreachable ({pg_problem})")
            continue
        if latency:
            rows += _latency_rows(target, mode, runs, reps, pg_admin_url, say)
            if inprocess:
                rows += _latency_rows(target, mode, runs, reps, pg_admin_url, say, True)
        if not memory:
            continue
        with fresh_database(target, pg_admin_url) as url:
            mem = asyncio.run(_memory(url, target, park))
        tag = f"{park // 1000}k" if park % 1000 == 0 else str(park)
        how = "VmRSS of the worker process, 3 samples, after a warm-up of 100 runs"
        idle_row = _row("worker_memory", "codara-idle", target, mem["idle"], "MB", how)
        idle_row["detail"] = mem["idle_fds"]
        parked_row = _row(
            "worker_memory",
            f"codara-{tag}-waiting",
            target,
            mem["parked"],
            "MB",
            how + f"; {park} runs parked on a signal (took {mem['park_seconds']:.0f} s)",
        )
        parked_row["detail"] = mem["parked_fds"]
        rows += [idle_row, parked_row]
        say(
            f"{label}: worker RSS idle {statistics.median(mem['idle']):.1f} MB, "
            f"{mem['idle_fds']['fds']} fds, {mem['idle_fds']['threads']} threads; with {park} "
            f"parked {statistics.median(mem['parked']):.1f} MB, {mem['parked_fds']['fds']} fds, "
            f"{mem['parked_fds']['threads']} threads"
        )
    return rows


def _latency_rows(
    target: Target,
    mode: str,
    runs: int,
    reps: int,
    pg_admin_url: str,
    say: Any,
    inprocess: bool = False,
) -> list[dict[str, Any]]:
    where = "in this process" if inprocess else "in a subprocess"
    label = f"{target.database}/{target.durability} (worker {where})"
    load = os.getloadavg()[0]
    with fresh_database(target, pg_admin_url) as url:
        got = asyncio.run(_latency(url, target, mode, runs, reps, inprocess))
    worker = load_settings().worker
    how = (
        f"{runs} runs parked on a {'review' if mode == 'review' else 'signal'}, decided at "
        f"random 10-60 ms gaps; worker {where} (concurrency {CONCURRENCY}, poll "
        f"{worker.poll_min_interval}-{worker.poll_interval} s); per rep "
        f"percentile of {runs}; {reps} reps after a warm-up; load avg {load:.1f}"
    )
    pooled = got["pooled"]
    say(
        f"{label}: p50 {statistics.median(got['p50']):.1f} ms, p99 "
        f"{statistics.median(got['p99']):.1f} ms (per-rep medians); pooled over "
        f"{len(pooled)}: p50 {_percentile(pooled, 0.5):.1f}, "
        f"p99 {_percentile(pooled, 0.99):.1f}, max {max(pooled):.1f} ms"
    )
    system = "codara-inprocess" if inprocess else "codara"
    return [
        _row("resume_latency", f"{system}-p50", target, got["p50"], "ms", how),
        _row("resume_latency", f"{system}-p99", target, got["p99"], "ms", how),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/latest.json`` (SQLite fsync and PostgreSQL)."""
    targets = [Target("sqlite", "fsync"), Target("postgresql", "fsync")]
    if quick:  # a smoke run (benchmarks.run --quick stays under 2 minutes): subprocess only
        return measure(targets, runs=10, reps=1, park=200, inprocess=False, log=sys.stderr)
    return measure(targets, runs=200, reps=3, park=100_000, log=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.resume_latency", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="10 runs, 1 rep, 200 parked, no in-process run"
    )
    p.add_argument("--database", choices=["sqlite", "postgresql"], action="append")
    p.add_argument("--durability", choices=["fsync", "os"], default="fsync", help="SQLite's")
    p.add_argument("--mode", choices=["review", "signal"], default="review")
    p.add_argument("--runs", type=int, help="decisions per repetition (200; quick 10)")
    p.add_argument("--reps", type=int, help="repetitions (3; quick 1)")
    p.add_argument("--park", type=int, help="runs parked for the memory figure (100000; quick 200)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument(
        "--no-inprocess", action="store_true", help="skip the latency with the worker in-process"
    )
    p.add_argument("--pg-url", default=DEFAULT_PG_URL, help="admin URL of the PostgreSQL server")
    p.add_argument("--output", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    databases = args.database or ["sqlite", "postgresql"]
    targets = [Target(d, args.durability if d == "sqlite" else "fsync") for d in databases]
    rows = measure(
        targets,
        mode=args.mode,
        runs=args.runs or (10 if args.quick else 200),
        reps=args.reps or (1 if args.quick else 3),
        park=args.park or (200 if args.quick else 100_000),
        memory=not args.no_memory,
        latency=not args.no_latency,
        inprocess=not (args.no_inprocess or args.quick),
        pg_admin_url=args.pg_url,
        log=sys.stderr,
    )
    print(json.dumps(rows, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
