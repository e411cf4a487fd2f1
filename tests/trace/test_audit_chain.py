"""`verify_chain` catches an edited, a deleted and a swapped journal row, and says what it
found (the whole tamper corpus is in test_tamper_corpus.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import codara


@pytest.fixture
async def finished_run(db_url: str) -> AsyncIterator[tuple[codara.App, str]]:
    app = codara.App(db_url)

    @app.workflow(name="five")
    async def wf(ctx: codara.Context, _: None) -> int:
        def square(i: int) -> int:
            return i * i

        for i in range(5):
            await ctx.step(f"s{i}", square, i)
        return 5

    async with app:
        await app.run("five")
        run_id = (await app.store.list_runs())[0].id
        report = await app.verify()
        assert report.ok, report.problems
        assert (report.runs_checked, report.rows_checked) == (1, 6)
        yield app, run_id


async def test_an_edited_row_is_caught(finished_run: tuple[codara.App, str]) -> None:
    app, run_id = finished_run
    await app.store.execute_raw(
        "UPDATE codara_journal SET output = '99' WHERE run_id = ? AND seq = 2", (run_id,)
    )
    report = await app.verify()
    assert not report.ok
    assert [(p.seq, p.problem) for p in report.problems] == [(2, "row content was edited")]


async def test_a_deleted_row_is_caught(finished_run: tuple[codara.App, str]) -> None:
    app, run_id = finished_run
    await app.store.execute_raw(
        "DELETE FROM codara_journal WHERE run_id = ? AND seq = 1", (run_id,)
    )
    report = await app.verify()
    assert not report.ok
    assert {p.seq for p in report.problems} == {2, None}
    assert any("deleted" in p.problem for p in report.problems if p.seq == 2)
    assert [p.problem for p in report.problems if p.seq is None] == [
        "the journal has 5 row(s), but had 6 when the run ended (heads #1): rows were deleted "
        "or added"
    ]


async def test_swapped_rows_are_caught(finished_run: tuple[codara.App, str]) -> None:
    app, run_id = finished_run
    # Swap the contents of rows 1 and 3, keeping seq order: hashes move with the rows.
    rows = {r.seq: r for r in await app.journal(run_id)}
    for a, b in ((1, 3), (3, 1)):
        r = rows[b]
        await app.store.execute_raw(
            "UPDATE codara_journal SET op = ?, name = ?, output = ?, input = ?, prev_hash = ?, "
            "hash = ?, started_at = ?, finished_at = ? WHERE run_id = ? AND seq = ?",
            (
                r.op,
                r.name,
                r.output,
                r.input,
                r.prev_hash,
                r.hash,
                r.started_at,
                r.finished_at,
                run_id,
                a,
            ),
        )
    report = await app.verify()
    assert {p.seq for p in report.problems} >= {1, 3}


async def test_a_cut_off_tail_is_caught(finished_run: tuple[codara.App, str]) -> None:
    app, run_id = finished_run
    await app.store.execute_raw(
        "DELETE FROM codara_journal WHERE run_id = ? AND seq >= 4", (run_id,)
    )
    report = await app.verify()
    assert [p.problem for p in report.problems] == [
        "run is completed but its journal has no final result row: the tail was deleted",
        "the journal has 4 row(s), but had 6 when the run ended (heads #1): rows were deleted "
        "or added",
    ]


async def test_an_edited_run_input_is_caught(finished_run: tuple[codara.App, str]) -> None:
    app, run_id = finished_run
    await app.store.execute_raw("UPDATE codara_runs SET input = '1' WHERE id = ?", (run_id,))
    report = await app.verify(run_id)
    assert [p.problem for p in report.problems] == ["run input, workflow or version was edited"]
