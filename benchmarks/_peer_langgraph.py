"""LangGraph: a StateGraph chain of N distinct nodes, invoked with ``durability="sync"``.

Each node is one durable step (a superstep: its writes and the checkpoint are saved before the
next node runs, because of ``durability="sync"``). Every run uses a fresh ``thread_id``.

* ``--database sqlite``: ``SqliteSaver`` on a file. Its own setup turns WAL on and leaves
  ``synchronous`` at SQLite's default (FULL), so every checkpoint is fsynced: durability ``fsync``.
* ``--database postgresql``: ``PostgresSaver`` at the server's defaults.
* ``--database none``: no checkpointer at all (not durable; a reference for the graph engine).

Runs/s: ``runs`` invocations of a 10-node chain on a thread pool of ``--threads`` (4) workers
sharing one checkpointer: the way a sync LangGraph app serves concurrent requests.
"""

from __future__ import annotations

import itertools
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from benchmarks._common import (
    add_one,
    emit,
    measure_runs_per_s,
    measure_step_overhead,
    parse_args,
)

THREADS = 4


class State(TypedDict):
    acc: int


def node(state: State) -> dict[str, int]:
    return {"acc": add_one(state["acc"])}


def build(n: int, checkpointer: Any) -> Any:
    g = StateGraph(State)
    names = [f"s{i}" for i in range(n)]
    for name in names:
        g.add_node(name, node)
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g.compile(checkpointer=checkpointer)


def plain(steps: int) -> int:
    state: State = {"acc": 0}
    for _ in range(steps):
        state = {"acc": node(state)["acc"]}
    return state["acc"]


def run(checkpointer: Any, args: Any, detail: dict[str, Any]) -> None:
    durable = checkpointer is not None
    graphs: dict[int, Any] = {}

    def invoke(steps: int) -> int:
        graph = graphs.get(steps)
        if graph is None:
            graph = graphs[steps] = build(steps, checkpointer)
        config = {"recursion_limit": steps + 10, "configurable": {"thread_id": str(uuid.uuid4())}}
        if durable:
            out = graph.invoke({"acc": 0}, config, durability="sync")
        else:
            out = graph.invoke({"acc": 0}, config)
        assert out["acc"] == steps, out
        return out["acc"]

    pool = ThreadPoolExecutor(max_workers=THREADS)

    def batch(runs: int, run_steps: int) -> None:
        for r in pool.map(invoke, [run_steps] * runs):
            assert r == run_steps

    # Compile outside the timed loops (a real app compiles its graph once).
    build_steps = (args.steps, args.run_steps)
    for s in build_steps:
        graphs[s] = build(s, checkpointer)
    step_overhead = measure_step_overhead(invoke, plain, args)
    runs_per_s = measure_runs_per_s(batch, args)
    pool.shutdown()
    detail["runs_per_s"] = f"graph.invoke on a ThreadPoolExecutor({THREADS}), one checkpointer"
    emit(
        args,
        system="langgraph" if durable else "langgraph-memory",
        durability="fsync" if durable else "none",
        step_overhead=step_overhead,
        runs_per_s=runs_per_s,
        detail=detail,
        packages=[
            "langgraph",
            "langgraph-checkpoint",
            "langgraph-checkpoint-sqlite",
            "langgraph-checkpoint-postgres",
        ],
    )


def main() -> None:
    args = parse_args(__doc__ or "")
    detail: dict[str, Any] = {}
    if args.database == "none":
        run(None, args, detail)
    elif args.database == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        with SqliteSaver.from_conn_string(args.path) as saver:
            saver.setup()
            # What the saver leaves in force (it sets WAL; synchronous stays at the default).
            probe = sqlite3.connect(args.path)
            detail["journal_mode"] = probe.execute("PRAGMA journal_mode").fetchone()[0]
            probe.close()
            detail["synchronous"] = saver.conn.execute("PRAGMA synchronous").fetchone()[0]
            detail["checkpointer"] = "SqliteSaver.from_conn_string(file)"
            run(saver, args, detail)
    else:
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(args.url) as saver:
            saver.setup()
            detail["checkpointer"] = "PostgresSaver.from_conn_string(url) (one connection)"
            run(saver, args, detail)


if __name__ == "__main__":
    main()
