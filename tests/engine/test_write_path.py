"""The write path: one round trip per step on PostgreSQL, and group commit on both databases.

What is counted is what the database sees, never a guess: on PostgreSQL, ReadyForQuery
messages through a TCP proxy between the store and the server (one per round trip), and the
transaction id (``xmin``) of each journal row (rows of one commit share it); on SQLite, the
statements SQLite itself executes on the store's write connection (its trace callback).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

import codara
from codara.engine._context import set_fault_hook
from codara.store import FencedError, JournalRecord, Store
from codara.store._group import Finish, Write
from codara.store._sql import SQLStore


# -- what the database sees -------------------------------------------------------------------
class WireCounter:
    """A TCP proxy in front of PostgreSQL that counts the server's ReadyForQuery messages:
    the server sends exactly one at the end of every client request (a simple query, or an
    extended-protocol exchange ending in Sync), so their count is the number of round trips."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.round_trips = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        for pipe in (self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True)):
            task = asyncio.ensure_future(pipe)
            self._pipes.add(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_server: bool
    ) -> None:
        buf = b""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                if from_server:  # every server message: type byte, then int32 length
                    buf += data
                    while len(buf) >= 5:
                        size = int.from_bytes(buf[1:5], "big")
                        if len(buf) < 1 + size:
                            break
                        if buf[:1] == b"Z":
                            self.round_trips += 1
                        buf = buf[1 + size :]
                await writer.drain()
        finally:
            writer.close()


@contextmanager
def sqlite_statements(store: Store) -> Iterator[list[str]]:
    """Every statement SQLite executes on the store's write connection, as it executes it."""
    assert isinstance(store, SQLStore)
    assert store.dialect == "sqlite"
    conn: sqlite3.Connection = store._conn  # type: ignore[attr-defined]
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def sqlite_commits(statements: list[str]) -> list[int]:
    """Journal rows per commit: a BEGIN ... COMMIT, or one autocommitted INSERT."""
    commits: list[int] = []
    rows: int | None = None
    for sql in statements:
        head = sql.lstrip()[:40].upper()
        if head.startswith("BEGIN"):
            rows = 0
        elif head.startswith(("COMMIT", "ROLLBACK")):
            if rows and head.startswith("COMMIT"):
                commits.append(rows)
            rows = None
        elif head.startswith("INSERT INTO CODARA_JOURNAL"):
            if rows is None:
                commits.append(1)
            else:
                rows += 1
    return commits


async def pg_commits(app: codara.App) -> list[int]:
    """Journal rows per PostgreSQL transaction (rows one transaction wrote share its xmin)."""
    rows = await app.store.execute_raw(
        "SELECT xmin::text, count(*) FROM codara_journal GROUP BY xmin::text"
    )
    return [int(n) for _, n in rows]


def _register(app: codara.App) -> None:
    @app.workflow(name="chain", version="1")
    async def chain(ctx: Any, spec: list[int]) -> int:
        tag, steps = spec
        acc = 0
        for i in range(steps):
            acc = await ctx.step(f"r{tag}-s{i}", lambda a: a + 1, acc)
        return acc


@asynccontextmanager
async def open_app(db_url: str) -> AsyncIterator[codara.App]:
    app = codara.App(db_url, durability="fsync")
    _register(app)
    async with app:
        yield app


# -- PostgreSQL: one round trip per step -------------------------------------------------------
async def test_a_lone_step_costs_one_round_trip_on_postgresql(pg_url: str) -> None:
    """Between a step's function returning and its row being durable, the store sends one
    request and waits for one answer: the fenced INSERT, autocommitted."""
    wire = WireCounter("127.0.0.1", 5432)
    async with wire as port:
        url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}") + "?sslmode=disable"
        per_step: list[int] = []
        mark = [0]

        def hook(point: str, name: str) -> None:
            if point == "step.executed":
                mark[0] = wire.round_trips
            elif point == "step.journaled":
                per_step.append(wire.round_trips - mark[0])

        async with open_app(url) as app:
            set_fault_hook(hook)
            try:
                assert await app.run("chain", [0, 40]) == 40
            finally:
                set_fault_hook(None)
    assert len(per_step) == 40
    # a connection's first use of the statement prepares it (one more round trip, once)
    assert sum(n - 1 for n in per_step) <= 4, per_step
    assert per_step[-20:] == [1] * 20, per_step


async def test_a_group_of_rows_is_one_round_trip_on_postgresql(pg_url: str) -> None:
    """A group of step rows is one autocommitted statement on the wire, however many rows;
    a group with finishes is two round trips (two pipelines), however many finishes."""
    wire = WireCounter("127.0.0.1", 5432)
    async with wire as port:
        url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}") + "?sslmode=disable"
        async with open_app(url) as app:
            store = app.store
            assert isinstance(store, SQLStore)
            ids = await app.start_runs("chain", [[i, 1] for i in range(8)])
            now = app.clock()
            claims = await store.claim("me", ["chain@1"], 8, now, now + 600)
            tokens = {c.id: c.token for c in claims}
            rows_trips, finish_trips = [], []
            for seq in range(8):  # the pool lends its 4 connections in turn: each prepares once
                before = wire.round_trips
                group = [Write(r, tokens[r], _row(r, seq)) for r in ids]
                assert await store._write_group(group) == [True] * 8
                rows_trips.append(wire.round_trips - before)
            for k in range(8):  # groups of one and of two finishes, in turn
                before = wire.round_trips
                group = [
                    Write(r, tokens[r], _result(r, 8 + k, now), Finish("completed", "1", None, now))
                    for r in [ids[k], ids[(k + 1) % 8]][: 1 + k % 2]
                ]
                assert await store._write_group(group) == [True] * len(group)
                finish_trips.append(wire.round_trips - before)
    assert rows_trips[4:] == [1, 1, 1, 1], rows_trips
    # BEGIN, the rows, the status UPDATE, the heads lock and the last head in one pipeline;
    # the heads and COMMIT in another: the same for one finish or two
    assert finish_trips[4:] == [2, 2, 2, 2], finish_trips


# -- group commit -------------------------------------------------------------------------------
async def test_concurrent_runs_share_commits_and_every_chain_verifies(db_url: str) -> None:
    runs, steps = 32, 6
    async with open_app(db_url) as app:
        await app.start_runs("chain", [[i, steps] for i in range(runs)])
        if app.store.dialect == "sqlite":
            with sqlite_statements(app.store) as statements:
                assert await app.work(concurrency=runs, until_idle=True) == runs
            commits = sqlite_commits(statements)
        else:
            assert await app.work(concurrency=runs, until_idle=True) == runs
            commits = await pg_commits(app)
        assert sum(commits) == runs * (steps + 1)  # every step row and result row
        # far fewer commits than rows: most rows shared their commit with other runs' rows
        assert len(commits) <= runs * (steps + 1) / 4, commits
        assert max(commits) >= runs / 2, commits
        for run_id in await app.store.run_ids(after=None, limit=100):
            assert (await app.get_run(run_id)).status == "completed"
        report = await app.verify()
        assert report.ok, report.problems
        assert report.runs_checked == runs
        assert report.heads_checked == runs


async def test_no_step_result_returns_before_its_row_is_committed(db_url: str) -> None:
    """When a step returns to its workflow (the ``step.journaled`` point), a connection of
    its own already reads the step's row: it was committed before the result came back."""
    runs, steps = 24, 5
    async with open_app(db_url) as app:
        if app.store.dialect == "sqlite":
            reader: Any = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        else:
            reader = psycopg.connect(db_url, autocommit=True)
        missing: list[str] = []
        checked: list[str] = []

        def hook(point: str, name: str) -> None:
            if point != "step.journaled":
                return
            q = "SELECT 1 FROM codara_journal WHERE name = " + (
                "?" if app.store.dialect == "sqlite" else "%s"
            )
            if not reader.execute(q, (name,)).fetchall():
                missing.append(name)
            checked.append(name)

        await app.start_runs("chain", [[i, steps] for i in range(runs)])
        set_fault_hook(hook)
        try:
            assert await app.work(concurrency=runs, until_idle=True) == runs
        finally:
            set_fault_hook(None)
            reader.close()
        assert len(checked) == runs * steps
        assert missing == []
        assert isinstance(app.store, SQLStore)
        assert max(app.store.group_sizes) > 1  # the rows checked were written in groups


def _result(run_id: str, seq: int, now: float) -> JournalRecord:
    return JournalRecord(
        run_id, seq, -1, "result", "completed", "completed", None, "1", None, now, now, 1,
        "p" * 64, "h" * 64, "",
    )  # fmt: skip


def _row(run_id: str, seq: int) -> JournalRecord:
    return JournalRecord(
        run_id, seq, seq, "step", f"s{seq}", "ok", "[]", "1", None, 1.0, 2.0, 1, "p" * 64,
        "h" * 64, "",
    )  # fmt: skip


async def _three_claimed(app: codara.App) -> list[tuple[str, int]]:
    assert isinstance(app.store, SQLStore)
    app.store._group.window = 5.0  # SQLite: writes of other runs this close are concurrent
    ids = await app.start_runs("chain", [[i, 1] for i in range(3)])
    now = app.clock()
    claims = await app.store.claim("me", ["chain@1"], 3, now, now + 600)
    tokens = {c.id: c.token for c in claims}
    return [(run_id, tokens[run_id]) for run_id in ids]


async def test_a_fenced_row_in_a_group_fails_only_its_own_run(db_url: str) -> None:
    async with open_app(db_url) as app:
        store = app.store
        assert isinstance(store, SQLStore)
        (a, ta), (b, tb), (c, tc) = await _three_claimed(app)
        # the first write goes directly; the other two, arriving while it is in flight (or,
        # on SQLite, right after another run's), are written as one group
        results = await asyncio.gather(
            store.append(a, ta, _row(a, 0)),
            store.append(b, tb + 1, _row(b, 0)),  # a token that no longer owns run b
            store.append(c, tc, _row(c, 0)),
            return_exceptions=True,
        )
        assert results[0] is None
        assert results[2] is None
        assert isinstance(results[1], FencedError)
        assert results[1].run_id == b
        assert store.group_sizes[-1] >= 2
        assert [len(await store.journal(r)) for r in (a, b, c)] == [1, 0, 1]


async def test_a_group_a_row_of_which_the_database_refuses_is_written_one_by_one(
    db_url: str,
) -> None:
    """A row whose seq is taken (another owner wrote it) aborts the group's transaction; the
    rows are then written one at a time, and only that row's run hears of it (fenced)."""
    async with open_app(db_url) as app:
        store = app.store
        assert isinstance(store, SQLStore)
        (a, ta), (b, tb), (c, tc) = await _three_claimed(app)
        await store.append(b, tb, _row(b, 0))
        results = await asyncio.gather(
            store.append(a, ta, _row(a, 0)),
            store.append(c, tc, _row(c, 0)),
            store.append(b, tb, _row(b, 0)),  # seq 0 of run b exists already
            return_exceptions=True,
        )
        assert list(results[:2]) == [None, None]
        assert isinstance(results[2], FencedError)
        assert store.group_sizes[-1] >= 2
        assert [len(await store.journal(r)) for r in (a, b, c)] == [1, 1, 1]


async def test_a_fenced_finish_in_a_group_leaves_the_others_finished(db_url: str) -> None:
    async with open_app(db_url) as app:
        store = app.store
        assert isinstance(store, SQLStore)
        (a, ta), (b, tb), (c, tc) = await _three_claimed(app)
        now = app.clock()

        def result_row(run_id: str) -> JournalRecord:
            return JournalRecord(
                run_id, 0, -1, "result", "completed", "completed", None, "1", None, now, now,
                1, "p" * 64, "h" * 64, "",
            )  # fmt: skip

        results = await asyncio.gather(
            *(
                store.finish(r, t, "completed", "1", None, result_row(r), now)
                for r, t in ((a, ta), (b, tb + 1), (c, tc))
            ),
            return_exceptions=True,
        )
        assert results[0] is None
        assert results[2] is None
        assert isinstance(results[1], FencedError)
        statuses = [(await app.get_run(r)).status for r in (a, b, c)]
        assert statuses == ["completed", "running", "completed"]
        heads = await store.execute_raw("SELECT subject FROM codara_chain_heads ORDER BY seq")
        assert sorted(h[0] for h in heads) == sorted([a, c])


async def test_a_lone_run_writes_each_row_directly(db_url: str) -> None:
    """With one run and nothing queued nothing waits for a group: no group is formed."""
    async with open_app(db_url) as app:
        assert isinstance(app.store, SQLStore)
        assert await app.run("chain", [0, 20]) == 20
        assert app.store.group_sizes == []
        assert Counter(r.kind for r in await app.store.journal(
            (await app.store.run_ids(after=None, limit=1))[0]
        )) == {"step": 20, "result": 1}  # fmt: skip


async def test_group_commit_leaves_branch_numbers_alone(db_url: str) -> None:
    """The task that writes a group is no branch of the run whose write started it: the
    tasks a workflow creates are numbered the same whether or not its rows were grouped."""
    app = codara.App(db_url, durability="os")

    @app.workflow(name="fan", version="1")
    async def fan(ctx: Any, n: int) -> list[int]:
        first = await ctx.step("first", lambda: n)
        return list(
            await asyncio.gather(
                ctx.step("left", lambda: first + 1), ctx.step("right", lambda: first + 2)
            )
        )

    async with app:
        runs = 16
        ids = await app.start_runs("fan", list(range(runs)))
        assert await app.work(concurrency=runs, until_idle=True) == runs
        assert isinstance(app.store, SQLStore)
        assert max(app.store.group_sizes) > 1
        for run_id in ids:
            rows = {r.name: r.branch for r in await app.store.journal(run_id)}
            assert (rows["first"], rows["left"], rows["right"]) == ("", "0", "1"), rows


# -- a worker killed right after a group commit -------------------------------------------------
def _crash_worker() -> Any:
    path = Path(__file__).resolve().parent / "crash_worker.py"
    spec = importlib.util.spec_from_file_location("codara_write_path_crash_worker", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.crash
@pytest.mark.timeout(300)
async def test_a_worker_killed_as_a_group_commit_returns_repeats_and_loses_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """16 runs in one worker process; it SIGKILLs itself as the first step result of a
    group comes back (``step.journaled`` of s1). Every row committed by then is kept and its
    step never runs again; the steps whose rows were not committed run again; every run
    completes with one row per operation and its chain verifies."""
    crash_worker = _crash_worker()
    runs, steps = 16, 3
    app = codara.App(db_url, durability="fsync")
    crash_worker.register(app)
    async with app:
        for ddl in crash_worker.SIDE_TABLES:
            await app.store.execute_raw(ddl)
        ids = await app.start_runs("idem", [steps] * runs)
        marker = tmp_path / "killed"
        fleet = crash_worker.Fleet(
            db_url, tmp_path, "--lease", "1.0", "--poll", "0.05", "--concurrency", str(runs),
            "--durability", "fsync", "--kill-at", "step.journaled:s1",
            "--kill-marker", str(marker),
        )  # fmt: skip
        try:
            victim = fleet.start()
            t0 = time.monotonic()
            while not fleet.exited:
                assert time.monotonic() - t0 < 90, f"no kill:\n{fleet.tail()}"
                await asyncio.sleep(0.05)
                fleet.check()
            assert fleet.exited == [(victim, -9)], fleet.tail()
            journaled = {
                (run_id, r.name) for run_id in ids for r in await app.journal(run_id)
            }  # fmt: skip
            # the run whose result came back first had its row committed
            assert any((run_id, "s1") in journaled for run_id in ids)
            fleet.start()
            t0 = time.monotonic()
            while (await app.store.count_runs()).get("completed", 0) < runs:
                assert time.monotonic() - t0 < 120, f"not resumed:\n{fleet.tail()}"
                await asyncio.sleep(0.1)
            assert "Traceback" not in fleet.log_text(), fleet.tail()
        finally:
            fleet.close()
        attempts = Counter(
            str(k) for (k,) in await app.store.execute_raw("SELECT key FROM effect_attempts")
        )
        effects = Counter(str(k) for (k,) in await app.store.execute_raw("SELECT key FROM effects"))
        for run_id in ids:
            rows = [(r.op, r.name) for r in await app.journal(run_id)]
            assert rows == [(0, "s0"), (1, "s1"), (2, "s2"), (-1, "completed")], rows
            for i in range(steps):
                key = f"{run_id}:{i}"
                assert effects[key] == 1  # the keyed effect took effect once
                if (run_id, f"s{i}") in journaled:  # durable before the kill: never again
                    assert attempts[key] == 1, (key, attempts[key])
        report = await app.verify()
        assert report.ok, report.problems
        assert report.runs_checked == runs
