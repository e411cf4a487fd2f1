"""Scale: claiming among a million finished runs, and many workers on one PostgreSQL.

    python -m benchmarks.scale                          # both parts, full size
    python -m benchmarks.scale --quick                  # smoke: 20,000 rows, 200 runs, 1-2 workers
    python -m benchmarks.scale --part plan --rows 1000000 --output f.json
    python -m benchmarks.scale --part workers --runs 2000 --workers 1,2,4

``claim_plan``: a fresh database (SQLite and PostgreSQL) gets ``--rows`` finished runs (written
by one INSERT ... SELECT, as the engine leaves them: ``ready_at`` NULL), 1,000 queued runs and
1,000 runs waiting on a deadline an hour away, then ``ANALYZE``. The claim statement the
worker sends (``SQLStore.claim``, limit 16) is shown with ``EXPLAIN QUERY PLAN`` (SQLite) and
``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` inside a rolled-back transaction (PostgreSQL), and
timed (median of 50 claims, each rolled back on PostgreSQL / released on SQLite). The row says
which index the plan reads and whether any node scans the whole table.

``shared_workers``: 1, 2 and 4 ``codara worker`` processes (concurrency 16 each) on one fresh
PostgreSQL database share ``--runs`` runs of a 6-step workflow whose last step writes one row
into ``bench_effects`` from its own connection, outside the journal: a run executed twice
would leave two rows, a lost one none. The runs are enqueued in one transaction once every
worker is up and idle; runs/s counts from that commit until the last run completed. The CPU
use of the whole machine over that time comes from ``/proc/stat``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import codara
from benchmarks.resume_latency import DEFAULT_PG_URL, ROOT, Target, _pg_available, fresh_database

APP_SPEC = "benchmarks.scale:app"
CONCURRENCY = 16
KEY = "bench_shared@1"

# -- the workflow the worker processes run ----------------------------------------------------
app = codara.App()
_effects_conn: Any = None


def _noop() -> None:
    return None


def _effect(run_id: str) -> int:
    """One row per execution of this step, written outside the journal (not exactly once)."""
    global _effects_conn
    if _effects_conn is None:
        import psycopg

        _effects_conn = psycopg.connect(os.environ["CODARA_DATABASE_URL"], autocommit=True)
    _effects_conn.execute(
        "INSERT INTO bench_effects (run_id, pid) VALUES (%s, %s)", (run_id, os.getpid())
    )
    return os.getpid()


@app.workflow(name="bench_shared")
async def bench_shared(ctx: codara.Context, _: Any) -> int:
    for i in range(5):
        await ctx.step(f"s{i}", _noop)
    return await ctx.step("effect", _effect, ctx.run_id)


# -- claim plan -------------------------------------------------------------------------------
_FILL_PG = (
    "INSERT INTO codara_runs (id, workflow, version, workflow_key, status, input, output, "
    "ready_at, token, signal_version, attempts, genesis_hash, created_at, updated_at, "
    "finished_at, claim_streak) "
    "SELECT lpad(to_hex(g), 32, '0') || %(tag)s, 'bench_shared', '1', 'bench_shared@1', "
    "CAST(%(status)s AS TEXT), 'null', NULL, CAST(%(ready)s AS DOUBLE PRECISION), 1, 0, 1, '', "
    "%(t0)s + g, %(t0)s + g, CASE WHEN CAST(%(status)s AS TEXT) = 'completed' "
    "THEN %(t0)s + g END, 0 "
    "FROM generate_series(1, %(n)s) g"
)
_FILL_SQLITE = (
    "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :n) "
    "INSERT INTO codara_runs (id, workflow, version, workflow_key, status, input, output, "
    "ready_at, token, signal_version, attempts, genesis_hash, created_at, updated_at, "
    "finished_at, claim_streak) "
    "SELECT printf('%032x', i) || :tag, 'bench_shared', '1', 'bench_shared@1', :status, "
    "'null', NULL, :ready, 1, 0, 1, '', :t0 + i, :t0 + i, "
    "CASE WHEN :status = 'completed' THEN :t0 + i END, 0 FROM g"
)


def _claim_sql(store: Any, now: float) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters ``SQLStore.claim`` sends for 16 runs of one workflow."""
    keys, key_params = store._members("workflow_key", [KEY])
    sql = store.CLAIM.format(keys=keys)
    return sql, ("bench", now + 30.0, now, now, *key_params, 16)


def _walk_pg(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found += _walk_pg(child)
    return found


async def _plan_pg(url: str, rows: int) -> dict[str, Any]:
    import psycopg

    async with codara.App(url) as bench:
        bench.workflow(name="bench_shared")(bench_shared)
        store = bench.store
        now = time.time()
        started = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            fill = {"t0": now - rows - 10, "ready": None}
            conn.execute(_FILL_PG, {**fill, "tag": "f", "status": "completed", "n": rows})
            conn.execute(_FILL_PG, {**fill, "tag": "q", "status": "queued", "n": 1000,
                                    "ready": now - 1})  # fmt: skip
            conn.execute(_FILL_PG, {**fill, "tag": "w", "status": "waiting", "n": 1000,
                                    "ready": now + 3600})  # fmt: skip
            conn.execute("ANALYZE codara_runs")
            fill_seconds = time.monotonic() - started
            sql, params = _claim_sql(store, now)
            pg_sql = sql.replace("?", "%s")
            times = []
            with conn.transaction(force_rollback=True):
                plan = conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + pg_sql, params
                ).fetchone()[0]
            for _ in range(50):
                with conn.transaction(force_rollback=True):
                    t0 = time.perf_counter()
                    got = conn.execute(pg_sql, params).fetchall()
                    times.append((time.perf_counter() - t0) * 1000.0)
            assert len(got) == 16
    nodes = _walk_pg(plan[0]["Plan"])
    seq = [n for n in nodes if "Seq Scan" in n["Node Type"]]
    indexes = sorted({n["Index Name"] for n in nodes if "Index Name" in n})
    ready = next(n for n in nodes if n.get("Index Name") == "ix_codara_runs_ready")
    return {
        "database": "postgresql",
        "rows": rows,
        "fill_seconds": round(fill_seconds, 1),
        "indexes": indexes,
        "seq_scans": len(seq),
        "ready_index_rows": ready.get("Actual Rows"),
        "shared_hit_blocks": plan[0]["Plan"].get("Shared Hit Blocks"),
        "claim_ms": round(statistics.median(times), 3),
        "plan": plan,
    }


async def _plan_sqlite(url: str, rows: int) -> dict[str, Any]:
    import sqlite3

    async with codara.App(url, durability="os") as bench:
        bench.workflow(name="bench_shared")(bench_shared)
        store = bench.store
        path = store._path
    now = time.time()
    started = time.monotonic()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        fill = {"t0": now - rows - 10, "ready": None}
        conn.execute(_FILL_SQLITE, {**fill, "tag": "f", "status": "completed", "n": rows})
        conn.execute(_FILL_SQLITE, {**fill, "tag": "q", "status": "queued", "n": 1000,
                                    "ready": now - 1})  # fmt: skip
        conn.execute(_FILL_SQLITE, {**fill, "tag": "w", "status": "waiting", "n": 1000,
                                    "ready": now + 3600})  # fmt: skip
        conn.execute("ANALYZE")
        fill_seconds = time.monotonic() - started
        sql, params = _claim_sql(store, now)
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        times = []
        for _ in range(50):
            conn.execute("BEGIN IMMEDIATE")
            t0 = time.perf_counter()
            got = conn.execute(sql, params).fetchall()
            times.append((time.perf_counter() - t0) * 1000.0)
            conn.execute("ROLLBACK")
        assert len(got) == 16
    finally:
        conn.close()
    full = [line for line in plan if line.startswith("SCAN codara_runs")]
    indexes = sorted(
        {line.split("USING ")[1].split(" (")[0].split()[-1] for line in plan if "USING" in line}
    )
    return {
        "database": "sqlite",
        "rows": rows,
        "fill_seconds": round(fill_seconds, 1),
        "indexes": indexes,
        "full_scans": len(full),
        "claim_ms": round(statistics.median(times), 3),
        "plan": plan,
    }


def claim_plans(rows: int, pg_admin_url: str, say: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for database in ("sqlite", "postgresql"):
        if database == "postgresql" and (problem := _pg_available(pg_admin_url)):
            say(f"skip claim plan on postgresql: {problem}")
            continue
        with fresh_database(Target(database, "fsync"), pg_admin_url) as url:
            plan_of = _plan_sqlite if database == "sqlite" else _plan_pg
            got = asyncio.run(plan_of(url, rows))
        scans = got.get("seq_scans", got.get("full_scans"))
        say(
            f"claim plan {database}, {rows:,} finished runs: indexes {', '.join(got['indexes'])}"
            f"; full scans {scans}; claim {got['claim_ms']:.2f} ms"
        )
        if database == "sqlite":
            say("  " + "\n  ".join(got["plan"]))
        out.append(
            {
                "workload": "claim_plan",
                "system": "codara",
                "database": database,
                "durability": "fsync",
                "median": got["claim_ms"],
                "unit": "ms_per_claim",
                "reps": 50,
                "how": f"claim of 16 among {rows:,} finished, 1,000 queued and 1,000 waiting "
                "runs, after ANALYZE; plan from EXPLAIN",
                "detail": {k: v for k, v in got.items() if k != "claim_ms"},
            }
        )
    return out


# -- many workers on one PostgreSQL -----------------------------------------------------------
def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def _spawn_workers(url: str, n: int, log: Any) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env.update(
        CODARA_DATABASE_URL=url,
        PYTHONPATH=os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p),
    )
    env.pop("CODARA_CONFIG", None)
    command = [sys.executable, "-m", "codara", "--app", APP_SPEC, "worker",
               "-n", str(CONCURRENCY), "--log-level", "warning"]  # fmt: skip
    return [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        for _ in range(n)
    ]


async def _shared(url: str, workers: int, runs: int) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_effects (run_id TEXT NOT NULL, pid INTEGER NOT NULL)")
    bench = codara.App(url)
    bench.workflow(name="bench_shared")(bench_shared)
    with tempfile.TemporaryFile(mode="w+") as log:
        async with bench:
            procs = _spawn_workers(url, workers, log)
            try:
                await asyncio.sleep(4.0)  # every worker imported, opened and idle
                for p in procs:
                    if p.poll() is not None:
                        log.seek(0)
                        raise RuntimeError(f"a worker exited: {log.read()}")
                busy0, total0 = _cpu_times()
                t0 = time.perf_counter()
                ids = await bench.start_runs("bench_shared", [None] * runs)
                deadline = time.monotonic() + 600
                while (await bench.store.count_runs()).get("completed", 0) < runs:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the runs did not complete in 600 s")
                    await asyncio.sleep(0.01)
                seconds = time.perf_counter() - t0
                busy1, total1 = _cpu_times()
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(timeout=60)
            counts = await bench.store.count_runs()
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT run_id) FROM bench_effects").fetchone()
        per_pid = [n for (n,) in conn.execute(
            "SELECT count(*) FROM bench_effects GROUP BY pid ORDER BY 1 DESC"
        )]  # fmt: skip
        executed = {r for (r,) in conn.execute("SELECT DISTINCT run_id FROM bench_effects")}
    return {
        "workers": workers,
        "runs": runs,
        "seconds": seconds,
        "runs_per_s": runs / seconds,
        "completed": counts.get("completed", 0),
        "effects": rows[0],
        "lost": len(set(ids) - executed),
        "twice": rows[0] - rows[1],
        "per_worker": per_pid,
        "cpu_busy": (busy1 - busy0) / max(1, total1 - total0),
    }


def shared_workers(
    runs: int, counts: list[int], reps: int, pg_admin_url: str, say: Any
) -> list[dict[str, Any]]:
    if problem := _pg_available(pg_admin_url):
        say(f"skip shared workers: PostgreSQL unreachable ({problem})")
        return []
    out: list[dict[str, Any]] = []
    for n in counts:
        results = []
        for _ in range(reps):
            with fresh_database(Target("postgresql", "fsync"), pg_admin_url) as url:
                results.append(asyncio.run(_shared(url, n, runs)))
        rates = [r["runs_per_s"] for r in results]
        say(
            f"{n} worker process(es), {runs} runs: {statistics.median(rates):,.0f} runs/s "
            f"(reps {', '.join(f'{x:.0f}' for x in rates)}); lost "
            f"{sum(r['lost'] for r in results)}, executed twice "
            f"{sum(r['twice'] for r in results)}; per worker {results[-1]['per_worker']}; "
            f"machine CPU busy {statistics.median(r['cpu_busy'] for r in results):.0%}"
        )
        out.append(
            {
                "workload": "shared_workers",
                "system": f"codara-{n}-workers",
                "database": "postgresql",
                "durability": "fsync",
                "median": round(statistics.median(rates), 1),
                "min": round(min(rates), 1),
                "max": round(max(rates), 1),
                "unit": "runs_per_s",
                "reps": reps,
                "how": f"{runs} runs of 6 steps shared by {n} `codara worker` process(es), "
                f"concurrency {CONCURRENCY} each, {os.cpu_count()} CPUs; load avg "
                f"{os.getloadavg()[0]:.1f}",
                "detail": {
                    "lost": sum(r["lost"] for r in results),
                    "executed_twice": sum(r["twice"] for r in results),
                    "completed": [r["completed"] for r in results],
                    "per_worker": [r["per_worker"] for r in results],
                    "cpu_busy": [round(r["cpu_busy"], 2) for r in results],
                },
            }
        )
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for ``benchmarks/latest.json``."""
    say = _say(sys.stderr)
    if quick:  # a smoke run (benchmarks.run --quick stays under 2 minutes)
        rows = claim_plans(20_000, DEFAULT_PG_URL, say)
        return rows + shared_workers(200, [1, 2], 1, DEFAULT_PG_URL, say)
    rows = claim_plans(1_000_000, DEFAULT_PG_URL, say)
    rows += shared_workers(2000, [1, 2, 4], 1, DEFAULT_PG_URL, say)
    return rows


def _say(log: Any) -> Any:
    def say(text: str) -> None:
        print(text, file=log, flush=True)

    return say


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="20,000 rows, 200 runs, 1 and 2 workers")
    p.add_argument("--part", choices=["plan", "workers"], action="append")
    p.add_argument("--rows", type=int, help="finished runs in the table (1,000,000)")
    p.add_argument("--runs", type=int, help="runs the workers share (2,000)")
    p.add_argument("--workers", help="worker process counts (1,2,4; quick 1,2)")
    p.add_argument("--reps", type=int, default=1, help="repetitions per worker count (1)")
    p.add_argument("--pg-url", default=DEFAULT_PG_URL, help="admin URL of the PostgreSQL server")
    p.add_argument("--output", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    parts = args.part or ["plan", "workers"]
    say = _say(sys.stderr)
    rows: list[dict[str, Any]] = []
    if "plan" in parts:
        rows += claim_plans(args.rows or (20_000 if args.quick else 1_000_000), args.pg_url, say)
    if "workers" in parts:
        counts = [int(x) for x in (args.workers or ("1,2" if args.quick else "1,2,4")).split(",")]
        runs = args.runs or (200 if args.quick else 2000)
        rows += shared_workers(runs, counts, args.reps, args.pg_url, say)
    print(json.dumps(rows, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
