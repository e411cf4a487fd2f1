"""The floor: the cheapest durable write a step could cost, on the same database and durability.

A "workflow" of N steps is N sequential single-row INSERTs of a small step row on one
connection, each committed before the next; runs/s counts a run as ``run_steps`` such commits,
all sequential on one connection (no concurrency, no group commit).

SQLite ``fsync``: WAL + synchronous=FULL (the WAL is fsynced at every commit).
SQLite ``os``:    WAL + synchronous=NORMAL (a commit reaches the OS, fsync at checkpoints).
PostgreSQL: server defaults (synchronous_commit=on, fsync=on), psycopg 3. ``raw_commit`` is one
autocommitted INSERT per step: one round trip, the cheapest durable write there is.
``--two-round-trips`` (system ``raw_commit_2rt``) sends INSERT and then COMMIT, two round trips.

The concurrent test runs ``concurrency`` runs "at once" the only way a single connection with
sequential commits can: round-robin, one step (one commit) of each run in turn; a step's
latency is from when its run became ready for it to its commit.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import sys
import time
from typing import Any

from benchmarks._common import (
    add_one,
    emit,
    measure_concurrent,
    measure_runs_per_s,
    measure_step_overhead,
    parse_args,
    plain_loop,
)

SYNCHRONOUS = {"fsync": "FULL", "os": "NORMAL"}
DDL = (
    "CREATE TABLE step_result (run_id BIGINT NOT NULL, seq INTEGER NOT NULL,"
    " output TEXT NOT NULL, PRIMARY KEY (run_id, seq))"
)
INSERT_SQLITE = "INSERT INTO step_result (run_id, seq, output) VALUES (?, ?, ?)"
INSERT_PG = "INSERT INTO step_result (run_id, seq, output) VALUES (%s, %s, %s)"


def main() -> None:
    two_rt = "--two-round-trips" in sys.argv
    if two_rt:
        sys.argv.remove("--two-round-trips")
    args = parse_args(__doc__ or "")
    run_ids = itertools.count(1)
    detail: dict[str, Any] = {"runs_per_s": "run = run_steps sequential commits, one connection"}

    if args.database == "sqlite":
        if args.durability not in SYNCHRONOUS:
            raise SystemExit("raw sqlite needs --durability fsync|os")
        conn = sqlite3.connect(args.path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[args.durability]}")
        conn.execute(DDL)
        conn.commit()
        detail["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
        detail["synchronous"] = conn.execute("PRAGMA synchronous").fetchone()[0]
        insert = INSERT_SQLITE
        durability = args.durability
        commit = conn.commit
    else:
        import psycopg

        conn = psycopg.connect(args.url, autocommit=not two_rt)  # type: ignore[assignment]
        conn.execute(DDL)
        conn.commit()
        for name in ("synchronous_commit", "fsync", "wal_sync_method", "server_version"):
            detail[name] = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
        conn.commit()
        insert = INSERT_PG
        durability = "fsync"
        detail["commit"] = "INSERT, then COMMIT: two round trips" if two_rt else (
            "one autocommitted INSERT: one round trip"
        )  # fmt: skip

        def commit() -> None:
            if two_rt:
                conn.commit()

    def workflow(steps: int) -> int:
        run_id = next(run_ids)
        acc = 0
        for seq in range(steps):
            acc = add_one(acc)
            conn.execute(insert, (run_id, seq, json.dumps({"acc": acc})))
            commit()
        return acc

    def batch(runs: int, run_steps: int) -> None:
        for _ in range(runs):
            workflow(run_steps)

    def round_robin(runs: int, run_steps: int, concurrency: int, latencies: list[float]) -> None:
        for first in range(0, runs, concurrency):
            wave = [(next(run_ids), 0) for _ in range(min(concurrency, runs - first))]
            accs = [0] * len(wave)
            ready = [time.perf_counter()] * len(wave)
            for seq in range(run_steps):
                for i, (run_id, _) in enumerate(wave):
                    accs[i] = add_one(accs[i])
                    conn.execute(insert, (run_id, seq, json.dumps({"acc": accs[i]})))
                    commit()
                    now = time.perf_counter()
                    latencies.append(now - ready[i])
                    ready[i] = now

    step_overhead = measure_step_overhead(workflow, plain_loop, args)
    runs_per_s = measure_runs_per_s(batch, args)
    concurrent = measure_concurrent(round_robin, args)
    conn.close()
    emit(
        args,
        system="raw_commit_2rt" if two_rt else "raw_commit",
        durability=durability,
        step_overhead=step_overhead,
        runs_per_s=runs_per_s,
        detail=detail,
        packages=["psycopg"],
        concurrent=concurrent,
    )


if __name__ == "__main__":
    main()
