"""Codara: ``@app.workflow`` awaiting ``ctx.step`` N times, on SQLite or PostgreSQL.

* SQLite ``fsync`` / ``os``: ``codara.App(database_url="sqlite:///...", durability=...)``.
* PostgreSQL: ``codara.App(database_url="postgresql+psycopg://...")`` at the server's defaults.

Step overhead: ``await app.run("chain", 100)`` (start and execute in this process).
Runs/s: ``runs`` x ``await app.start_run("chain", 10)`` (durable enqueue), then
``await app.work(concurrency=16, until_idle=True)``: the enqueue is inside the timed span.
Concurrent runs/s (at each ``--levels``): ``await app.start_runs("timed", [10] * runs)`` (one
durable enqueue), then ``await app.work(concurrency=level, until_idle=True)``; a step's latency
is the time between its run's consecutive steps (the first from the run's start), as the
floor's. Steps of concurrent runs share commits (group commit).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from benchmarks._common import (
    add_one,
    ameasure_concurrent,
    ameasure_runs_per_s,
    ameasure_step_overhead,
    emit,
    parse_args,
    plain_loop,
    run_async,
    skip,
)


async def bench(codara: Any, args: argparse.Namespace) -> None:
    if args.database == "sqlite":
        if args.durability not in ("fsync", "os"):
            raise SystemExit("codara sqlite needs --durability fsync|os")
        url = "sqlite:///" + os.path.abspath(args.path)
        app = codara.App(database_url=url, durability=args.durability)
        durability = args.durability
    else:
        url = args.url.replace("postgresql://", "postgresql+psycopg://", 1)
        app = codara.App(database_url=url)
        durability = "fsync"

    @app.workflow(name="chain", version="1")
    async def chain(ctx: Any, n: int) -> int:
        acc = 0
        for i in range(n):
            acc = await ctx.step(f"s{i}", add_one, acc)
        return acc

    latencies: list[list[float]] = [[]]

    @app.workflow(name="timed", version="1")
    async def timed(ctx: Any, n: int) -> int:
        acc = 0
        sink = latencies[0]
        last = time.perf_counter()
        for i in range(n):
            acc = await ctx.step(f"s{i}", add_one, acc)
            now = time.perf_counter()
            sink.append(now - last)
            last = now
        return acc

    async def concurrent(runs: int, run_steps: int, level: int, sink: list[float]) -> None:
        latencies[0] = sink
        await app.start_runs("timed", [run_steps] * runs)
        done = await app.work(concurrency=level, until_idle=True)
        assert done == runs, (done, runs)

    async def workflow(steps: int) -> int:
        out = await app.run("chain", steps)
        assert out == steps, out
        return out

    async def batch(runs: int, run_steps: int) -> None:
        for _ in range(runs):
            await app.start_run("chain", run_steps)
        done = await app.work(concurrency=args.concurrency, until_idle=True)
        assert done == runs, (done, runs)

    async with app:
        step_overhead = await ameasure_step_overhead(workflow, plain_loop, args)
        runs_per_s = await ameasure_runs_per_s(batch, args)
        concurrent_result = await ameasure_concurrent(concurrent, args)
        groups = list(getattr(app.store, "group_sizes", []))

    detail: dict[str, Any] = {
        "database_url": url.split("@")[-1],
        "runs_per_s": (
            f"app.start_run x runs, then app.work(concurrency={args.concurrency},"
            " until_idle=True), enqueue included"
        ),
        "group_commit": {
            "groups_recent": len(groups),
            "rows_per_group_mean": round(sum(groups) / len(groups), 1) if groups else None,
            "rows_per_group_max": max(groups) if groups else None,
        },
    }
    if args.database == "sqlite":
        import sqlite3

        probe = sqlite3.connect(args.path)
        detail["journal_mode"] = probe.execute("PRAGMA journal_mode").fetchone()[0]
        probe.close()
    emit(
        args,
        system="codara",
        durability=durability,
        step_overhead=step_overhead,
        runs_per_s=runs_per_s,
        concurrent=concurrent_result,
        detail=detail,
        packages=["codara-orchestrator", "sqlalchemy", "psycopg"],
    )


def main() -> None:
    args = parse_args(__doc__ or "")
    try:
        import codara
    except ImportError as e:
        skip(f"codara not importable: {e}")
    if not hasattr(codara, "App"):
        skip("codara.App is not there yet")
    run_async(bench(codara, args))


if __name__ == "__main__":
    main()
