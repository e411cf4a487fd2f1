"""Claiming stays one range scan of the ready index, however many finished runs the table holds.

A finished run has ``ready_at`` NULL, so it is not in ``ix_codara_runs_ready`` (a partial
index) at all; the claim reads that index from its start up to ``now`` and stops after
``limit`` runs. Here 20,000 finished runs, 50 queued and 50 waiting on a far deadline, then
``ANALYZE``: the plan of the claim statement the worker sends must read the ready index, and
no node may scan the whole table. ``benchmarks/scale.py`` shows the plans with 1,000,000.
"""

from __future__ import annotations

import json
import time
from typing import Any

import codara
from codara.store._sql import SQLStore

FINISHED = 20_000
KEY = "plan@1"


def _fill(dialect: str, status: str, n: int, ready: float | None, tag: str, t0: float) -> str:
    """One INSERT ... SELECT of ``n`` runs (no parameters: the same text on both databases)."""
    ready_sql = "NULL" if ready is None else repr(ready)
    finished = f"{t0} + i" if status == "completed" else "NULL"
    if dialect == "postgresql":
        rows, run_id = "generate_series(1, {n}) AS g(i)", "lpad(to_hex(i), 32, '0')"
        source = f"FROM {rows.format(n=n)}"
    else:
        run_id = "printf('%032x', i)"
        source = (
            f"FROM (WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g "
            f"WHERE i < {n}) SELECT i FROM g)"
        )
    return (
        "INSERT INTO codara_runs (id, workflow, version, workflow_key, status, input, ready_at, "
        "token, signal_version, attempts, genesis_hash, created_at, updated_at, finished_at, "
        f"claim_streak) SELECT {run_id} || '{tag}', 'plan', '1', '{KEY}', '{status}', 'null', "
        f"CAST({ready_sql} AS DOUBLE PRECISION), 1, 0, 1, '', {t0} + i, {t0} + i, "
        f"CAST({finished} AS DOUBLE PRECISION), 0 {source}"
    )


def _pg_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _pg_nodes(child))]


async def test_the_claim_reads_the_ready_index_not_the_table(db_url: str) -> None:
    app = codara.App(db_url, durability="os")
    async with app:
        store = app.store
        assert isinstance(store, SQLStore)
        now = time.time()
        t0 = now - FINISHED - 10
        for status, n, ready, tag in (
            ("completed", FINISHED, None, "f"),
            ("queued", 50, now - 1, "q"),
            ("waiting", 50, now + 3600, "w"),
        ):
            await store.execute_raw(_fill(store.dialect, status, n, ready, tag, t0))
        await store.execute_raw("ANALYZE")
        keys, key_params = store._members("workflow_key", [KEY])
        sql = store.CLAIM.format(keys=keys)
        params = ("planner", now + 30, now, now, *key_params, 16)

        if store.dialect == "postgresql":
            explained = await store.execute_raw("EXPLAIN (FORMAT JSON) " + sql, params)
            plan = explained[0][0]
            nodes = _pg_nodes((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
            types = [n["Node Type"] for n in nodes]
            assert not [t for t in types if "Seq Scan" in t], types
            scans = [n for n in nodes if n.get("Index Name") == "ix_codara_runs_ready"]
            assert scans, nodes
            assert scans[0]["Node Type"] == "Index Scan", nodes
            assert "ready_at <=" in scans[0]["Index Cond"]  # a range, from the index's start
        else:
            lines = [r[3] for r in await store.execute_raw("EXPLAIN QUERY PLAN " + sql, params)]
            assert "SEARCH codara_runs USING INDEX ix_codara_runs_ready (ready_at<?)" in lines
            assert not [line for line in lines if line.startswith("SCAN")], lines
            assert not [line for line in lines if "TEMP B-TREE" in line], "ordered by the index"

        claimed = await store.claim("planner", [KEY], 16, now, now + 30)
        assert len(claimed) == 16
        assert {c.id[-1] for c in claimed} == {"q"}, "only ready runs, never a waiting one"
