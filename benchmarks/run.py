"""Codara vs LangGraph vs DBOS vs the raw commit floor.

    uv run --group bench python -m benchmarks.run          # all; writes benchmarks/latest.json
    uv run --group bench python -m benchmarks.run --quick  # smoke run; writes no file
    uv run --group bench python -m benchmarks.run --only codara --only raw_commit

Two workloads, for every configuration (system x database x durability):

* ``step_overhead``: a 100-step workflow of trivial steps; (its wall time - the time of calling
  the 100 step functions directly) / 100, in microseconds per step.
* ``runs_per_s``: 200 runs of a 10-step workflow, run the way the system runs concurrent work.
* ``concurrent_16`` / ``concurrent_64`` (Codara and the floor): 200 runs of 10 steps at 16 and
  64 concurrent runs in one process, runs/s with the p50/p99 step latency beside it; the floor
  commits every step on its own, one after another (round-robin over the runs).

Each configuration runs in its own fresh process (``benchmarks/_*.py``) on a fresh database (a
file in a new temp dir, or a new PostgreSQL database that is dropped afterwards), with one
untimed warm-up and ``--reps`` timed repetitions; the table shows medians with min and max.
Then the measurements of Codara alone (:data:`EXTRAS`): ``benchmarks/resume_latency.py``
(decision to resumed run, p50/p99 per database, worker in a subprocess and in-process; worker
RSS, descriptors and threads with parked runs) and ``benchmarks/scale.py`` (claim plans with
1,000,000 finished runs; 1, 2 and 4 worker processes sharing runs on PostgreSQL).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from benchmarks._common import RESULT_PREFIX, SKIP_PREFIX

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "benchmarks" / "latest.json"
DEFAULT_PG_URL = os.environ.get("CODARA_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SYSTEMS = (
    "raw_commit",
    "raw_commit_2rt",
    "codara",
    "langgraph",
    "langgraph-memory",
    "dbos",
    "triage",
)
CODARA_ALONE = ("resume_latency", "scale")
"""Measurements of Codara alone, run after the configurations (``benchmarks/<name>.py``'s
``run(quick)``): wake-up latency and parked-run memory; claim plans and shared workers."""
EXTRAS = ("startup", *CODARA_ALONE)  # startup: `codara --help` / `runs list` (_startup.py)
UNITS = {"step_overhead": "us_per_step", "runs_per_s": "runs_per_s"}


@dataclass(frozen=True)
class Config:
    system: str
    module: str
    database: str  # sqlite | postgresql | none
    durability: str  # fsync | os | default (the peer's own default)
    extra: tuple[str, ...] = ()  # more arguments for the worker

    @property
    def label(self) -> str:
        return f"{self.system} / {self.database} / {self.durability}"


# Grouped by database and durability, floor first, so that the configurations a ratio compares
# run close together in time (on a shared machine the background load drifts).
CONFIGS = [
    Config("raw_commit", "benchmarks._raw", "sqlite", "fsync"),
    Config("codara", "benchmarks._codara", "sqlite", "fsync"),
    Config("langgraph", "benchmarks._peer_langgraph", "sqlite", "default"),
    Config("dbos", "benchmarks._peer_dbos", "sqlite", "default"),
    Config("raw_commit", "benchmarks._raw", "sqlite", "os"),
    Config("codara", "benchmarks._codara", "sqlite", "os"),
    Config("langgraph-memory", "benchmarks._peer_langgraph", "none", "default"),
    Config("raw_commit", "benchmarks._raw", "postgresql", "default"),
    Config("raw_commit_2rt", "benchmarks._raw", "postgresql", "default", ("--two-round-trips",)),
    Config("codara", "benchmarks._codara", "postgresql", "default"),
    Config("langgraph", "benchmarks._peer_langgraph", "postgresql", "default"),
    Config("dbos", "benchmarks._peer_dbos", "postgresql", "default"),
    # the reference workload against its model time (benchmarks/_workload.py)
    Config("triage", "benchmarks._workload", "sqlite", "fsync"),
]


@dataclass
class Outcome:
    config: Config
    result: dict[str, Any] | None = None
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0
    busy_before: float | None = None
    busy_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- machine -------------------------------------------------------------------------------


def _counters() -> tuple[int, int, int]:
    """(all CPU jiffies, idle + iowait jiffies, busiest disk's io_ticks in ms)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    io_ms = 0
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if not fields[2].startswith(("loop", "ram", "zram", "dm-")):
                    io_ms = max(io_ms, int(fields[12]))
    except (OSError, IndexError, ValueError):
        pass
    return sum(parts), parts[3] + (parts[4] if len(parts) > 4 else 0), io_ms


def machine_busy(window: float = 1.0) -> float | None:
    """How busy the machine is while this harness sleeps for ``window`` seconds: the larger of
    the fraction of CPU time in use and the fraction of time the disk had I/O in flight."""
    try:
        t0, i0, d0 = _counters()
        time.sleep(window)
        t1, i1, d1 = _counters()
    except OSError:
        return None
    cpu = 1.0 - (i1 - i0) / max(1, t1 - t0)
    disk = (d1 - d0) / 1000.0 / window
    return min(1.0, max(cpu, disk))


def wait_idle(limit: float, threshold: float, console: Console) -> float | None:
    """Wait up to ``limit`` seconds for other work to leave the CPUs and the disk mostly idle."""
    busy = machine_busy()
    deadline = time.monotonic() + limit
    warned = False
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        if not warned:
            console.print(
                f"  [dim]machine {busy:.0%} busy with other work; waiting (≤{limit:.0f}s)[/]"
            )
            warned = True
        busy = machine_busy(2.0)
    return busy


def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


# --- databases -----------------------------------------------------------------------------


def _pg_url_with_db(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


class Postgres:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names = itertools.count(1)

    def available(self) -> str | None:
        try:
            import psycopg

            with psycopg.connect(self.admin_url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except Exception as e:  # any failure means: skip the PostgreSQL configurations
            return f"{type(e).__name__}: {e}".strip()
        return None

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)

    def create(self, system: str) -> tuple[str, str]:
        name = f"bench_{system.replace('-', '_')}_{os.getpid()}_{next(self.names)}"
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._admin(f"CREATE DATABASE {name}")
        return name, _pg_url_with_db(self.admin_url, name)

    def drop(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --- running one configuration --------------------------------------------------------------


def run_config(
    cfg: Config,
    params: list[str],
    pg: Postgres,
    timeout: float,
    env: dict[str, str],
) -> Outcome:
    out = Outcome(cfg)
    tmpdir = tempfile.mkdtemp(prefix=f"codara-bench-{cfg.system}-")
    dbname = None
    cmd = [sys.executable, "-m", cfg.module, "--database", cfg.database, *params, *cfg.extra]
    if cfg.durability != "default":
        cmd += ["--durability", cfg.durability]
    try:
        if cfg.database == "sqlite":
            cmd += ["--path", os.path.join(tmpdir, f"{cfg.system}.db")]
        elif cfg.database == "postgresql":
            dbname, url = pg.create(cfg.system)
            cmd += ["--url", url]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            out.error = f"timed out after {timeout:.0f}s"
            return out
        finally:
            out.seconds = time.monotonic() - t0
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                out.result = json.loads(line[len(RESULT_PREFIX) :])
            elif line.startswith(SKIP_PREFIX):
                out.skipped = line[len(SKIP_PREFIX) :]
        if out.result is None and out.skipped is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            out.error = f"exit {proc.returncode}: " + "\n".join(tail)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if dbname is not None:
            try:
                pg.drop(dbname)
            except Exception as e:  # leave a note, never hide the measurement
                out.extra["drop_error"] = str(e)
    return out


# --- aggregation and reporting ---------------------------------------------------------------


def summarize(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        r = o.result
        if r is None:
            continue
        for level, c in (r.get("concurrent") or {}).items():
            samples = c["runs_per_s"]
            rows.append(
                {
                    "workload": f"concurrent_{level}",
                    "system": r["system"],
                    "database": r["database"],
                    "durability": r["durability"],
                    "median": round(statistics.median(samples), 1),
                    "min": round(min(samples), 1),
                    "max": round(max(samples), 1),
                    "unit": "runs_per_s",
                    "reps": len(samples),
                    "p50_step_ms": c.get("p50_step_ms"),
                    "p99_step_ms": c.get("p99_step_ms"),
                    "how": (
                        f"{r['params']['runs']} runs of {r['params']['run_steps']} steps, "
                        f"{level} at once in one process; step latency over every step"
                    ),
                    "machine_busy_before_after": [
                        None if b is None else round(b, 2) for b in (o.busy_before, o.busy_after)
                    ],
                }
            )
        for workload, unit in UNITS.items():
            samples = r.get(workload)
            if not samples:
                continue
            rows.append(
                {
                    "workload": workload,
                    "system": r["system"],
                    "database": r["database"],
                    "durability": r["durability"],
                    "median": round(statistics.median(samples), 1),
                    "min": round(min(samples), 1),
                    "max": round(max(samples), 1),
                    "unit": unit,
                    "reps": len(samples),
                    "how": _how(r, workload),
                    "machine_busy_before_after": [
                        None if b is None else round(b, 2) for b in (o.busy_before, o.busy_after)
                    ],
                }
            )
    order = {
        "database": ("sqlite", "postgresql", "none"),
        "durability": ("fsync", "os", "none"),
        "system": SYSTEMS,
    }
    rows.sort(
        key=lambda r: (
            (r["workload"] != "step_overhead", r["workload"] != "runs_per_s", r["workload"]),
            *(order[k].index(r[k]) if r[k] in order[k] else 99 for k in order),
        )
    )
    return rows


def _how(r: dict[str, Any], workload: str) -> str:
    p = r["params"]
    if workload == "step_overhead":
        return (
            f"{p['steps']}-step workflow, {p['per_rep']} per rep, minus the plain calls, "
            f"per step; {p['reps']} reps after 1 warm-up"
        )
    return f"{p['runs']} runs of {p['run_steps']} steps; " + str(r["detail"].get("runs_per_s", ""))


def _key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return (row["workload"], row["system"], row["database"], row["durability"])


Index = dict[tuple[str, ...], dict[str, Any]]


def ratio_vs_floor(row: dict[str, Any], index: Index) -> float | None:
    """How many times the floor's cost (same database and durability); >1 = slower."""
    if row["system"].startswith("raw_commit") or row["database"] == "none":
        return None
    floor = index.get((row["workload"], "raw_commit", row["database"], row["durability"]))
    if floor is None or not floor["median"] or not row["median"]:
        return None
    if row["workload"] == "step_overhead":
        return row["median"] / floor["median"]
    return floor["median"] / row["median"]


def codara_match(row: dict[str, Any], index: Index) -> Any:
    """The Codara row a peer row is compared with: same database and durability; the
    non-durable LangGraph reference is compared with Codara on SQLite ``os``."""
    if row["database"] == "none":
        return index.get((row["workload"], "codara", "sqlite", "os"))
    return index.get((row["workload"], "codara", row["database"], row["durability"]))


def codara_advantage(row: dict[str, Any], codara: dict[str, Any]) -> float | None:
    """>1 = Codara is better (less overhead per step, more runs per second)."""
    if not row["median"] or not codara["median"]:
        return None
    if row["workload"] == "step_overhead":
        return row["median"] / codara["median"]
    return codara["median"] / row["median"]


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def _fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}x" if x < 100 else f"{x:,.0f}x"


def print_tables(console: Console, rows: list[dict[str, Any]], runs: int) -> None:
    index = {_key(r): r for r in rows}
    for workload, title in (
        ("step_overhead", "Per-step overhead, 100-step workflow (µs per step, lower is better)"),
        ("runs_per_s", f"Throughput, {runs} runs of a 10-step workflow (runs/s, higher is better)"),
    ):
        table = Table(title=title, title_justify="left")
        for col in ("system", "database", "durability", "median", "min", "max", "reps"):
            table.add_column(
                col, justify="right" if col in ("median", "min", "max", "reps") else "left"
            )
        table.add_column("cost vs raw floor", justify="right")
        table.add_column("Codara advantage", justify="right")
        mine = [r for r in rows if r["workload"] == workload]
        for i, r in enumerate(mine):
            group = (r["database"], r["durability"])
            last = (
                i + 1 == len(mine) or (mine[i + 1]["database"], mine[i + 1]["durability"]) != group
            )
            mine_or_floor = r["system"] == "codara" or r["system"].startswith("raw_commit")
            codara = None if mine_or_floor else codara_match(r, index)
            adv = codara_advantage(r, codara) if codara else None
            table.add_row(
                r["system"],
                r["database"],
                r["durability"],
                _fmt(r["median"]),
                _fmt(r["min"]),
                _fmt(r["max"]),
                str(r["reps"]),
                _fmt_ratio(ratio_vs_floor(r, index)),
                (_fmt_ratio(adv) + f" (vs {codara['database']} {codara['durability']})")
                if adv is not None
                else "-",
                end_section=last,
            )
        console.print(table)
    concurrent = [r for r in rows if r["workload"].startswith("concurrent_")]
    if concurrent:
        table = Table(
            title=f"Concurrent runs in one process, {runs} runs of 10 steps (runs/s; step "
            "latency in ms)",
            title_justify="left",
        )
        for col in ("system", "database", "durability", "at once", "median", "min", "max"):
            table.add_column(col, justify="left" if col in ("system", "database") else "right")
        table.add_column("p50 step ms", justify="right")
        table.add_column("p99 step ms", justify="right")
        table.add_column("x floor runs/s", justify="right")
        for r in concurrent:
            floor = index.get((r["workload"], "raw_commit", r["database"], r["durability"]))
            gain = r["median"] / floor["median"] if floor and floor["median"] else None
            table.add_row(
                r["system"],
                r["database"],
                r["durability"],
                r["workload"].split("_", 1)[1],
                _fmt(r["median"]),
                _fmt(r["min"]),
                _fmt(r["max"]),
                "-" if r.get("p50_step_ms") is None else f"{r['p50_step_ms']:.2f}",
                "-" if r.get("p99_step_ms") is None else f"{r['p99_step_ms']:.2f}",
                "-" if r["system"] == "raw_commit" or gain is None else f"{gain:.1f}x",
            )
        console.print(table)
    console.print(
        "[dim]cost vs raw floor: the system's cost / the floor's on the same database and "
        "durability (µs ratio; for runs/s, floor runs/s / system runs/s; the floor runs a "
        "run as 10 sequential commits on one connection). Codara advantage: the peer's cost / "
        "Codara's (>1 = Codara cheaper or faster).[/]"
    )


def _workload_line(r: dict[str, Any]) -> str:
    worker = statistics.median(r["workload_worker_s"])
    runs = statistics.median(r["workload_runs_s"])
    return (
        f"{r['tickets']} tickets: model {r['model_sorted_s']:.1f}s sorted, "
        f"{r['model_arrival32_s']:.1f}s arrival/32; worker {worker:.1f}s "
        f"({r['ratio_worker_vs_sorted']:.2f}x), runs {runs:.1f}s "
        f"({r['ratio_runs_vs_sorted']:.2f}x the sorted model time)"
    )


def workload_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """The triage workload against the embedder alone (benchmarks/_workload.py), one row."""
    rows = []
    for o in outcomes:
        r = o.result
        if r is None or r.get("system") != "triage":
            continue
        rows.append(
            {
                "workload": "triage_vs_model",
                "system": "triage",
                "database": r["database"],
                "durability": r["durability"],
                "median": r["ratio_worker_vs_sorted"],
                "unit": "x_model_sorted",
                "how": (
                    f"{r['tickets']} tickets through `codara worker --until-idle` (concurrency "
                    f"{r['concurrency']}, model fitted beforehand) / Embedder.embed of the same "
                    "texts in one call (sorted by length, batches of 32); same process, same run"
                ),
                "detail": r,
                "machine_busy_before_after": [
                    None if b is None else round(b, 2) for b in (o.busy_before, o.busy_after)
                ],
            }
        )
    return rows


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run under 2 minutes: 3 reps, 40 runs, smaller extras, no scale, no file",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SYSTEM",
        help="run only these systems or extra measurements (repeatable or comma-separated): "
        f"{', '.join(SYSTEMS + EXTRAS)}",
    )
    p.add_argument("--database", choices=["sqlite", "postgresql"], help="run only this database")
    p.add_argument("--reps", type=int, help="timed repetitions per workload (default 5; quick 3)")
    p.add_argument("--runs", type=int, help="runs per runs/s repetition (default 200; quick 40)")
    p.add_argument(
        "--output",
        type=Path,
        help="where to write the JSON results (default benchmarks/latest.json for a full run; "
        "--quick, --only, --database write no file unless this is given)",
    )
    p.add_argument("--pg-url", default=DEFAULT_PG_URL, help="admin URL of the PostgreSQL server")
    p.add_argument("--timeout", type=float, help="seconds per configuration (600; quick 180)")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each configuration wait up to this long for the CPUs and the disk to be "
        "<20%% busy with other work (for shared machines)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    only = {s.strip() for item in args.only for s in item.split(",") if s.strip()}
    unknown = only - set(SYSTEMS) - set(EXTRAS)
    if unknown:
        console.print(f"[red]unknown system(s): {', '.join(sorted(unknown))}[/]")
        return 2
    reps = args.reps or (3 if args.quick else 5)
    runs = args.runs or (40 if args.quick else 200)
    per_rep = 1 if args.quick else 3
    timeout = args.timeout or (180.0 if args.quick else 600.0)
    params = ["--reps", str(reps), "--runs", str(runs), "--per-rep", str(per_rep)]
    output = args.output
    if output is None and not (args.quick or only or args.database):
        output = DEFAULT_OUTPUT

    configs = [
        c
        for c in CONFIGS
        if (not only or c.system in only) and (not args.database or c.database == args.database)
    ]
    pg = Postgres(args.pg_url)
    pg_problem = pg.available() if any(c.database == "postgresql" for c in configs) else None

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)

    info = machine_info()
    console.print(
        f"[bold]Codara benchmarks[/] on {info['cpu']} ({info['cores']} cores), {info['kernel']}, "
        f"Python {info['python']}: {len(configs)} configurations, {reps} reps, "
        f"{runs} runs per runs/s rep"
    )
    outcomes: list[Outcome] = []
    started = time.monotonic()
    for cfg in configs:
        if cfg.database == "postgresql" and pg_problem:
            outcomes.append(Outcome(cfg, skipped=f"PostgreSQL unreachable: {pg_problem}"))
            console.print(f"[yellow]skip[/] {cfg.label}: PostgreSQL unreachable ({pg_problem})")
            continue
        busy = wait_idle(args.wait_idle, 0.2, console) if args.wait_idle else machine_busy(0.5)
        console.print(f"[bold]{cfg.label}[/] ...", end=" ")
        if cfg.system == "triage":
            extra = ["--tickets", "200", "--reps", "1"] if args.quick else []
            o = run_config(cfg, params + extra, pg, max(timeout, 1200.0), env)
        else:
            o = run_config(cfg, params, pg, timeout, env)
        o.busy_before, o.busy_after = busy, machine_busy(0.5)
        outcomes.append(o)
        load = (
            f"machine busy before/after: {o.busy_before:.0%}/{o.busy_after:.0%}"
            if o.busy_before is not None and o.busy_after is not None
            else ""
        )
        if o.result and o.result["system"] == "triage":
            console.print(f"{_workload_line(o.result)}  [dim]({o.seconds:.0f}s; {load})[/]")
        elif o.result:
            r = o.result
            so = statistics.median(r["step_overhead"])
            rps = statistics.median(r["runs_per_s"]) if r.get("runs_per_s") else float("nan")
            console.print(
                f"{so:,.1f} µs/step, {rps:,.1f} runs/s  [dim]({o.seconds:.0f}s; {load})[/]"
            )
        elif o.skipped:
            console.print(f"[yellow]skipped[/]: {o.skipped}")
        else:
            console.print(f"[red]failed[/] ({o.seconds:.0f}s)\n{o.error}")
    console.print(f"[dim]total {time.monotonic() - started:.0f}s[/]\n")

    rows = summarize(outcomes)
    if rows:
        print_tables(console, rows, runs)
    rows += workload_rows(outcomes)
    if (not only or "startup" in only) and args.database in (None, "sqlite"):
        from benchmarks._startup import measure as measure_startup

        console.print("[bold]start-up[/] (wall time of a fresh process) ...")
        busy = machine_busy(0.5)
        startup = measure_startup(reps=3 if args.quick else 7, no_cache=not args.quick)
        around = [None if b is None else round(b, 2) for b in (busy, machine_busy(0.5))]
        rows += [{**r, "machine_busy_before_after": around} for r in startup]
    versions: dict[str, str] = {}
    for o in outcomes:
        if o.result:
            versions.update({k: v for k, v in o.result["versions"].items() if v})
        if (
            o.result
            and o.result["system"].startswith("raw_commit")
            and "server_version" in o.result["detail"]
        ):
            versions["postgresql-server"] = o.result["detail"]["server_version"]
    console.print("[dim]" + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "[/]")
    busy_list = [b for o in outcomes for b in (o.busy_before, o.busy_after) if b is not None]
    if busy_list and max(busy_list) > 0.25:
        console.print(
            f"[yellow]warning: other work kept the machine up to {max(busy_list):.0%} busy "
            "(CPU or disk) around some configurations; figures from a shared machine are "
            "noisy (try --wait-idle 300)[/]"
        )
    if not args.database:
        for name in CODARA_ALONE:
            if args.quick and not only and name == "scale":  # keeps --quick under 2 minutes
                console.print("[dim]scale skipped in --quick (run it: --quick --only scale)[/]")
                continue
            if not only or name in only:
                console.print(f"[bold]{name}[/] ...")
                rows += _extra(name, args.quick)
    if output is not None and rows:
        output.write_text(json.dumps(rows, indent=2) + "\n")
        console.print(f"wrote {output}")
    failed = [o for o in outcomes if o.error]
    return 1 if failed else 0


def _extra(name: str, quick: bool) -> list[dict[str, Any]]:
    """The rows of ``benchmarks/<name>.py`` (it prints its own summary to stderr)."""
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    rows: list[dict[str, Any]] = module.run(quick)
    return rows


if __name__ == "__main__":
    sys.exit(main())
