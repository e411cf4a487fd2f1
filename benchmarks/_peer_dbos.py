"""DBOS: a ``@DBOS.workflow()`` calling a ``@DBOS.step()`` N times, on its system database.

DBOS is a process-wide singleton, so each database is its own process (as every configuration
here is anyway). ``system_database_url`` is ``sqlite:///<file>`` or the PostgreSQL URL; DBOS
creates its schema at ``DBOS.launch()``. No conductor key is given, so nothing leaves the host.

SQLite: DBOS leaves journal_mode and synchronous at SQLite's defaults (rollback journal,
synchronous=FULL), so every commit is fsynced: durability ``fsync``. PostgreSQL: server defaults.

Runs/s (``--mode``):
* ``start`` (default): ``DBOS.start_workflow`` for each run, then ``get_result()`` on every
  handle: each run starts at once on DBOS's executor thread pool.
* ``queue``: ``DBOS.register_queue(worker_concurrency=--concurrency)`` and ``enqueue_workflow``;
  the queue thread polls at its default interval (1 s).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from benchmarks._common import (
    add_one,
    emit,
    measure_runs_per_s,
    measure_step_overhead,
    parse_args,
    plain_loop,
)


def main() -> None:
    mode = "start"
    if "--mode" in sys.argv:
        i = sys.argv.index("--mode")
        mode = sys.argv[i + 1]
        del sys.argv[i : i + 2]
    args = parse_args(__doc__ or "")

    from dbos import DBOS, DBOSConfig

    url = "sqlite:///" + os.path.abspath(args.path) if args.database == "sqlite" else args.url
    config: DBOSConfig = {"name": "codara-bench", "system_database_url": url, "log_level": "ERROR"}
    DBOS(config=config)

    @DBOS.step()
    def step(x: int) -> int:
        return add_one(x)

    @DBOS.workflow()
    def chain(n: int) -> int:
        acc = 0
        for _ in range(n):
            acc = step(acc)
        return acc

    DBOS.launch()
    detail: dict[str, Any] = {"system_database_url": url.split("@")[-1]}
    if args.database == "sqlite":
        import sqlite3

        probe = sqlite3.connect(args.path)
        detail["journal_mode"] = probe.execute("PRAGMA journal_mode").fetchone()[0]
        detail["synchronous"] = probe.execute("PRAGMA synchronous").fetchone()[0]
        probe.close()

    def workflow(steps: int) -> int:
        out = chain(steps)
        assert out == steps, out
        return out

    queue_name = "bench"
    if mode == "queue":
        DBOS.register_queue(queue_name, worker_concurrency=args.concurrency)
        detail["runs_per_s"] = (
            f"DBOS.enqueue_workflow on a queue with worker_concurrency={args.concurrency}"
            " (default 1 s polling), then get_result() on every handle"
        )
    else:
        detail["runs_per_s"] = "DBOS.start_workflow for every run, then get_result() on each"

    def batch(runs: int, run_steps: int) -> None:
        if mode == "queue":
            handles = [DBOS.enqueue_workflow(queue_name, chain, run_steps) for _ in range(runs)]
        else:
            handles = [DBOS.start_workflow(chain, run_steps) for _ in range(runs)]
        for h in handles:
            assert h.get_result() == run_steps

    step_overhead = measure_step_overhead(workflow, plain_loop, args)
    runs_per_s = measure_runs_per_s(batch, args)
    DBOS.destroy()
    emit(
        args,
        system="dbos",
        durability="fsync",
        step_overhead=step_overhead,
        runs_per_s=runs_per_s,
        detail=detail,
        packages=["dbos", "sqlalchemy", "psycopg"],
    )


if __name__ == "__main__":
    main()
