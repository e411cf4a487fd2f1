"""What-if: ``codara policy simulate`` over thousands of real gated runs, in pages.

    python -m benchmarks.whatif                       # 1,000 and 4,000 runs, SQLite and PostgreSQL
    python -m benchmarks.whatif --runs 500,2000 --database sqlite --output f.json

For each size, a fresh database gets that many runs of a gated workflow, executed by a real
worker (one ``policy:reply`` decision each; a quarter ask a person, and half of those are
approved through :class:`Reviews`). :func:`codara.review.simulate` then re-evaluates every
decision under a changed policy file, timed (median of 3), then once more under
``tracemalloc`` for the peak of Python's traced memory during the simulation. Memory should
stay flat with the number of runs (one page of 500 runs at a time); the time grows with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import codara
from benchmarks.resume_latency import DEFAULT_PG_URL, Target, _pg_available, fresh_database
from codara.config import Settings
from codara.review import Principal, ReviewGate, Reviews, load_policies, load_policy_file, simulate

OLD: dict[str, Any] = {
    "policy_input": {"intent": "string", "confidence": "double"},
    "policies": [
        {"name": "fraud", "when": 'intent == "fraud"', "outcome": "deny"},
        {"name": "unsure", "when": "confidence < 0.75", "outcome": "ask", "role": "support"},
    ],
}
NEW = """
[workflows.bench_whatif.policy_input]
intent = "string"
confidence = "double"

[[workflows.bench_whatif.policies]]
name = "fraud"
when = 'intent == "fraud"'
outcome = "deny"

[[workflows.bench_whatif.policies]]
name = "unsure"
when = "confidence < 0.6"
outcome = "ask"
role = "support"

[[workflows.bench_whatif.policies]]
name = "billing"
when = 'intent == "billing"'
outcome = "ask"
role = "billing"

[workflows.bench_whatif.sampling]
rate = 0.05
role = "audit"
"""
PEOPLE = Principal("bench", frozenset({"support", "billing", "audit"}))
INTENTS = ("greeting", "billing", "refund", "fraud")


def _app(url: str) -> codara.App:
    settings = Settings.model_validate({"store": {"url": url, "durability": "os"}})
    app = codara.App(settings=settings)
    gate = ReviewGate(load_policies(OLD, workflow="bench_whatif"), workflow="bench_whatif")

    @app.workflow(name="bench_whatif")
    async def bench_whatif(ctx: codara.Context, req: dict[str, Any]) -> str:
        proposal = {"intent": req["intent"], "reply": "thanks"}
        result = await gate.check(ctx, "reply", proposal, inputs=req)
        return result.outcome

    return app


async def _seed(app: codara.App, n: int) -> None:
    inputs = [
        {"intent": INTENTS[i % 4], "confidence": 0.5 + (i % 10) / 20} for i in range(n)
    ]  # confidence 0.50 .. 0.95: a quarter below 0.75 (asked), of the non-fraud ones
    for i in range(0, n, 1000):
        await app.start_runs("bench_whatif", inputs[i : i + 1000])
    await app.work(until_idle=True)
    reviews = Reviews(app.store, app.clock)
    while True:
        items = await reviews.queue(PEOPLE, limit=500)
        undecided = [item for item in items if item.status == "pending"]
        if not undecided:
            break
        for k, item in enumerate(undecided):
            if k % 2:
                await reviews.approve(PEOPLE, item.id)
            else:  # the intent corrected: the proposal was wrong
                await reviews.edit(PEOPLE, item.id, {"intent": "other", "reply": "x"})
    await app.work(until_idle=True)


async def _measure(target: Target, n: int, pg_admin: str, policies_file: Path) -> dict[str, Any]:
    with fresh_database(target, pg_admin) as url:
        app = _app(url)
        async with app:
            started = time.perf_counter()
            await _seed(app, n)
            seeded = time.perf_counter() - started
            policies = load_policy_file(policies_file, "bench_whatif")
            times: list[float] = []
            sim = None
            for _ in range(3):
                t0 = time.perf_counter()
                sim = await simulate(app.store, "bench_whatif", policies, since=0.0, until=1e10)
                times.append(time.perf_counter() - t0)
            tracemalloc.start()  # apart: tracing slows Python down several times
            await simulate(app.store, "bench_whatif", policies, since=0.0, until=1e10)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            if sim is None or sim.compared != n:
                raise RuntimeError(f"re-evaluated {sim and sim.compared} of {n} decisions")
            return {
                "database": target.database,
                "runs": n,
                "seed_seconds": round(seeded, 2),
                "simulate_seconds_median": round(statistics.median(times), 3),
                "decisions_per_second": round(n / statistics.median(times)),
                "peak_traced_mib": round(peak / 2**20, 2),
                "changed": sim.changed,
                "labelled": sim.labelled,
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="1000,4000", help="sizes, comma-separated")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.runs.split(",")]
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    if "postgresql" in databases and _pg_available(args.pg_url) is not None:
        print("PostgreSQL unreachable: SQLite only", file=sys.stderr)
        databases.remove("postgresql")
    folder = Path(tempfile.mkdtemp(prefix="codara-whatif-"))
    policies_file = folder / "new.toml"
    policies_file.write_text(NEW, encoding="utf-8")
    rows = []
    for database in databases:
        for n in sizes:
            row = asyncio.run(_measure(Target(database, "os"), n, args.pg_url, policies_file))
            print(json.dumps(row))
            rows.append(row)
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
