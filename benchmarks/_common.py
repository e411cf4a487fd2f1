"""Shared pieces of the benchmark workers: arguments, timing loops, the result line.

A worker is one configuration (system x database x durability) in one fresh process. The parent
(``benchmarks/run.py``) creates the database (a file path in a fresh temp dir, or a fresh
PostgreSQL database), passes it on the command line, and reads back one line from stdout:

    BENCH_RESULT {"system": ..., "step_overhead": [...], "runs_per_s": [...], ...}

or ``BENCH_SKIP <reason>`` when the system is not available. Anything else on stdout/stderr is
treated as log output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "
SKIP_PREFIX = "BENCH_SKIP "


def add_one(x: int) -> int:
    """The step body every system runs: trivial on purpose, so only the overhead is measured."""
    return x + 1


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--database", choices=["sqlite", "postgresql", "none"], required=True)
    p.add_argument(
        "--durability",
        choices=["fsync", "os", "none", "default"],
        default="default",
        help="SQLite level for raw/codara; peers run at their own default",
    )
    p.add_argument("--path", help="SQLite file (in a fresh directory)")
    p.add_argument("--url", help="PostgreSQL URL of a fresh, empty database (postgresql://...)")
    p.add_argument("--steps", type=int, default=100, help="steps of the step-overhead workflow")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of each workload")
    p.add_argument("--per-rep", type=int, default=3, help="100-step workflows per repetition")
    p.add_argument("--runs", type=int, default=200, help="runs per repetition of the runs/s test")
    p.add_argument("--run-steps", type=int, default=10, help="steps of each run in the runs/s test")
    p.add_argument("--concurrency", type=int, default=16, help="concurrency of the runs/s test")
    p.add_argument(
        "--levels",
        default="16,64",
        help="concurrencies of the concurrent runs/s test (comma-separated; empty: none)",
    )
    return p.parse_args()


def levels(args: argparse.Namespace) -> list[int]:
    return [int(x) for x in str(args.levels).split(",") if x.strip()]


def skip(reason: str) -> None:
    print(SKIP_PREFIX + reason, flush=True)
    sys.exit(0)


def emit(
    args: argparse.Namespace,
    *,
    system: str,
    durability: str,
    step_overhead: list[float],
    runs_per_s: list[float] | None,
    detail: dict[str, Any],
    packages: list[str],
    concurrent: dict[str, dict[str, Any]] | None = None,
) -> None:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    result = {
        "system": system,
        "database": args.database,
        "durability": durability,
        "step_overhead": step_overhead,
        "runs_per_s": runs_per_s,
        "concurrent": concurrent or {},
        "detail": detail,
        "params": {
            "steps": args.steps,
            "reps": args.reps,
            "per_rep": args.per_rep,
            "runs": args.runs,
            "run_steps": args.run_steps,
            "concurrency": args.concurrency,
        },
        "python": platform.python_version(),
        "versions": versions,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _us_per_step(durable_ns: int, plain_ns: int, per_rep: int, steps: int) -> float:
    return (durable_ns - plain_ns) / per_rep / steps / 1000.0


def measure_step_overhead(
    workflow: Callable[[int], Any],
    plain: Callable[[int], Any],
    args: argparse.Namespace,
) -> list[float]:
    """Per repetition: (time of ``per_rep`` durable workflows - same number of plain-call loops)
    / per_rep / steps, in microseconds. One untimed warm-up of each first."""
    steps, per_rep = args.steps, args.per_rep
    workflow(steps)
    plain(steps)
    samples = []
    for _ in range(args.reps):
        t0 = time.perf_counter_ns()
        for _ in range(per_rep):
            workflow(steps)
        t1 = time.perf_counter_ns()
        for _ in range(per_rep):
            plain(steps)
        t2 = time.perf_counter_ns()
        samples.append(_us_per_step(t1 - t0, t2 - t1, per_rep, steps))
    return samples


async def ameasure_step_overhead(
    workflow: Callable[[int], Awaitable[Any]],
    plain: Callable[[int], Any],
    args: argparse.Namespace,
) -> list[float]:
    """Async twin of :func:`measure_step_overhead` (the plain loop stays synchronous)."""
    steps, per_rep = args.steps, args.per_rep
    await workflow(steps)
    plain(steps)
    samples = []
    for _ in range(args.reps):
        t0 = time.perf_counter_ns()
        for _ in range(per_rep):
            await workflow(steps)
        t1 = time.perf_counter_ns()
        for _ in range(per_rep):
            plain(steps)
        t2 = time.perf_counter_ns()
        samples.append(_us_per_step(t1 - t0, t2 - t1, per_rep, steps))
    return samples


def measure_runs_per_s(batch: Callable[[int, int], Any], args: argparse.Namespace) -> list[float]:
    """Per repetition: ``runs`` runs of a ``run_steps``-step workflow, runs per second of wall
    time. ``batch(runs, run_steps)`` must return only when every run has completed. One untimed
    warm-up batch first."""
    batch(args.runs, args.run_steps)
    samples = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        batch(args.runs, args.run_steps)
        samples.append(args.runs / (time.perf_counter() - t0))
    return samples


async def ameasure_runs_per_s(
    batch: Callable[[int, int], Awaitable[Any]], args: argparse.Namespace
) -> list[float]:
    """Async twin of :func:`measure_runs_per_s`."""
    await batch(args.runs, args.run_steps)
    samples = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        await batch(args.runs, args.run_steps)
        samples.append(args.runs / (time.perf_counter() - t0))
    return samples


def concurrent_result(runs_per_s: list[float], latencies: list[float]) -> dict[str, Any]:
    """One concurrency level: runs/s per repetition, and the step latency percentiles (ms)
    over every step of every timed repetition."""
    lat = sorted(latencies)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000.0, 3) if lat else None

    return {"runs_per_s": runs_per_s, "p50_step_ms": pct(0.50), "p99_step_ms": pct(0.99)}


def measure_concurrent(
    batch: Callable[[int, int, int, list[float]], Any], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Per concurrency level: ``batch(runs, run_steps, concurrency, latencies)`` timed as in
    :func:`measure_runs_per_s`; ``latencies`` collects each step's latency (seconds)."""
    out = {}
    for level in levels(args):
        batch(args.runs, args.run_steps, level, [])
        samples, latencies = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            batch(args.runs, args.run_steps, level, latencies)
            samples.append(args.runs / (time.perf_counter() - t0))
        out[str(level)] = concurrent_result(samples, latencies)
    return out


async def ameasure_concurrent(
    batch: Callable[[int, int, int, list[float]], Awaitable[Any]], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Async twin of :func:`measure_concurrent`."""
    out = {}
    for level in levels(args):
        await batch(args.runs, args.run_steps, level, [])
        samples: list[float] = []
        latencies: list[float] = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            await batch(args.runs, args.run_steps, level, latencies)
            samples.append(args.runs / (time.perf_counter() - t0))
        out[str(level)] = concurrent_result(samples, latencies)
    return out


def plain_loop(steps: int) -> int:
    """The reference for step overhead: the same step function called directly."""
    acc = 0
    for _ in range(steps):
        acc = add_one(acc)
    return acc


def run_async(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]
