"""Property: any tree of gather, steps, sleeps and waits, interrupted at any point, resumes to
the same output, with every journaled step executed exactly once and none journaled twice.

A tree is JSON: ``["step", name, delay_ms]``, ``["sleep", ms]``, ``["wait", signal]``,
``["seq", [...]]`` or ``["gather", [...]]``. The workflow interprets it; steps finish after
their own delays, so branches complete in orders that differ from their call order. Each
example is interrupted at a drawn journal row: the executing worker is stopped right after
that row is durable: its lease lapses and another worker takes it over (see ``_Takeover``),
then it is resumed until done.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import codara
from codara.engine import RetryPolicy
from codara.engine._context import set_fault_hook
from codara.store import parse_url

_names = itertools.count()

Tree = list[Any]


def _trees() -> st.SearchStrategy[Tree]:
    step = st.builds(lambda d: ["step", f"s{next(_names)}", d], st.integers(0, 4))
    leaf = st.one_of(
        step,
        step,
        step,
        st.builds(lambda d: ["sleep", d], st.integers(0, 5)),
        st.builds(lambda: ["wait", f"w{next(_names)}"]),
    )
    return st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.builds(lambda k: ["seq", k], st.lists(kids, min_size=1, max_size=3)),
            st.builds(lambda k: ["gather", k], st.lists(kids, min_size=2, max_size=3)),
        ),
        max_leaves=8,
    )


EXECUTED: Counter[str] = Counter()


async def _work(name: str, delay_ms: int, token: str) -> list[str]:
    EXECUTED[name] += 1
    await asyncio.sleep(delay_ms / 1000)
    return [name, token]


async def _interpret(ctx: codara.Context, node: Tree) -> Any:
    kind = node[0]
    if kind == "step":
        token = str(ctx.uuid4())  # replayable: the journaled argument must match on replay
        return await ctx.step(node[1], _work, node[1], node[2], token)
    if kind == "sleep":
        await ctx.sleep(node[1] / 1000)
        return "slept"
    if kind == "wait":
        return await ctx.wait_for(node[1])
    if kind == "seq":
        return [await _interpret(ctx, child) for child in node[1]]
    return list(await asyncio.gather(*(_interpret(ctx, child) for child in node[1])))


def _steps(node: Tree) -> list[str]:
    if node[0] == "step":
        return [node[1]]
    if node[0] in ("seq", "gather"):
        return [name for child in node[1] for name in _steps(child)]
    return []


class _Takeover:
    """Stands for a worker killed right after a journal row became durable: from a
    connection of its own, the run's lease is made to lapse and its fencing token bumped,
    as a new worker's claim would, so nothing more the old attempt does is written."""

    def __init__(self, url: str) -> None:
        parsed = parse_url(url)
        if parsed.dialect == "sqlite":
            assert parsed.sqlite_path is not None
            self._conn: Any = sqlite3.connect(parsed.sqlite_path, isolation_level=None)
        else:
            self._conn = psycopg.connect(url, autocommit=True)
        self._mark = "?" if parsed.dialect == "sqlite" else "%s"

    def __call__(self, run_id: str) -> set[str]:
        m = self._mark
        self._conn.execute(
            f"UPDATE codara_runs SET token = token + 1, ready_at = 0, owner = NULL WHERE id = {m}",
            (run_id,),
        )
        rows = self._conn.execute(
            f"SELECT name FROM codara_journal WHERE run_id = {m} AND kind = 'step'", (run_id,)
        ).fetchall()
        return {r[0] for r in rows}

    def close(self) -> None:
        self._conn.close()


async def _drive(app: codara.App, url: str, run_id: str, kill_after: int | None) -> set[str]:
    """Resume until finished; take the run over once, right after the ``kill_after``-th
    step row is durable. Returns the steps journaled at that moment."""
    written = 0
    journaled_at_kill: set[str] = set()
    takeover = _Takeover(url)

    def hook(point: str, name: str) -> None:
        nonlocal written, journaled_at_kill
        if point != "step.journaled" or kill_after is None:
            return
        written += 1
        if written == kill_after:
            journaled_at_kill = takeover(run_id)
            event("taken over mid-run")

    set_fault_hook(hook)
    try:
        for _ in range(200):
            record = await app.get_run(run_id)
            if record.status in ("completed", "failed"):
                return journaled_at_kill
            if record.status == "waiting":
                for name in (record.waiting_for or "").split(","):
                    await app.send_signal(run_id, name, f"sig:{name}")
            if record.status == "sleeping":
                await asyncio.sleep(max(0.0, (record.ready_at or 0) - app.clock()))
            try:
                await app.resume(run_id)
            except codara.ConflictError:
                await asyncio.sleep(0.005)
        raise AssertionError(f"run {run_id} did not finish")
    finally:
        set_fault_hook(None)
        takeover.close()


async def _example(url: str, tree: Tree, kill_after: int | None) -> None:
    EXECUTED.clear()
    app = codara.App(url, durability="os", retry=RetryPolicy(initial_delay=0.001))

    @app.workflow(name="tree")
    async def tree_wf(ctx: codara.Context, node: Tree) -> Any:
        return await _interpret(ctx, node)

    async with app:
        run_id = await app.start_run("tree", tree)
        steps = len(_steps(tree))
        if kill_after is not None:  # land on one of this tree's step rows
            kill_after = 1 + (kill_after - 1) % steps if steps else None
        before_kill = await _drive(app, url, run_id, kill_after)
        record = await app.get_run(run_id)
        assert record.status == "completed", record.error
        journal = await app.journal(run_id)
        step_rows = Counter(r.name for r in journal if r.kind == "step")
        expected = _steps(tree)
        assert step_rows == Counter(expected)  # every step journaled exactly once
        for name in before_kill:  # durable before the kill: never executed again
            assert EXECUTED[name] == 1, (name, EXECUTED)
        for name in expected:  # the rest: at least once, at most once more (the kill)
            assert 1 <= EXECUTED[name] <= 2, (name, EXECUTED)
        # each step's journaled token (drawn by ctx.uuid4() on the first run) is what the
        # final replay computed again
        output = await app.output(run_id)
        tokens = dict(_leaves(output))
        for row in journal:
            if row.kind == "step" and row.output is not None:
                name, token = codara_json(row.output)
                assert tokens[name] == token
        assert (await app.verify(run_id)).ok


def _leaves(value: Any) -> list[tuple[str, str]]:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, str) for v in value)
        and value[0].startswith("s")
        and value[0][1:].isdigit()
    ):
        return [(value[0], value[1])]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return []


def codara_json(text: str) -> Any:
    import orjson

    return orjson.loads(text)


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=_trees(), kill=st.integers(1, 8))
def test_random_trees_resume_to_the_same_output_on_sqlite(
    tree: Tree, kill: int, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/p{next(_names)}.db"
    asyncio.run(_example(url, tree, kill))


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=_trees(), kill=st.integers(1, 8))
def test_random_trees_resume_to_the_same_output_on_postgres(
    tree: Tree, kill: int, pg_url: str
) -> None:
    asyncio.run(_example(pg_url, tree, kill))
