"""Replay is deterministic whatever the workflow does: parallel branches finishing in any
order, results of lambdas and partials, time and randomness used for branching, timeouts."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from typing import Any

import pytest
from pydantic import BaseModel

import codara
from codara.engine import NO_RETRY


class Quote(BaseModel):
    amount: float
    currency: str


async def _settle(app: codara.App, run_id: str, signals: dict[str, Any] | None = None) -> Any:
    """Resume the run until it finishes, answering every wait with its signal."""
    for _ in range(50):
        record = await app.get_run(run_id)
        if record.status in ("completed", "failed", "cancelled"):
            return record
        if record.status == "waiting":
            for name in (record.waiting_for or "").split(","):
                await app.send_signal(run_id, name, (signals or {}).get(name, name))
        elif record.status == "sleeping":
            await asyncio.sleep(max(0.0, (record.ready_at or 0) - app.clock()) + 0.01)
        try:
            await app.resume(run_id)
        except codara.ConflictError:
            await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} did not finish")


async def test_gather_of_branches_replays_after_they_finished_in_another_order(
    app: codara.App,
) -> None:
    """Two branches of two steps each; the second branch's steps finish first. The run then
    parks, and the resume replays all four steps from the journal without re-running any."""
    ran: Counter[str] = Counter()

    async def work(name: str, delay: float) -> str:
        ran[name] += 1
        await asyncio.sleep(delay)
        return name

    async def branch(ctx: codara.Context, tag: str, delay: float) -> list[str]:
        first = await ctx.step(f"{tag}1", work, f"{tag}1", delay)
        second = await ctx.step(f"{tag}2", work, f"{tag}2", delay)
        return [first, second]

    @app.workflow(name="parallel")
    async def parallel(ctx: codara.Context, _: None) -> list[Any]:
        both = await asyncio.gather(branch(ctx, "a", 0.05), branch(ctx, "b", 0.0))
        go = await ctx.wait_for("go")
        return [*both, go]

    run_id = await app.start_run("parallel")
    assert (await app.resume(run_id)).status == "waiting"
    record = await _settle(app, run_id)
    assert record.status == "completed", record.error
    assert await app.output(run_id) == [["a1", "a2"], ["b1", "b2"], "go"]
    assert ran == Counter({"a1": 1, "a2": 1, "b1": 1, "b2": 1})
    journal = await app.journal(run_id)
    steps = {(r.branch, r.op): r.name for r in journal if r.kind == "step"}
    assert steps == {("0", 0): "a1", ("0", 1): "a2", ("1", 0): "b1", ("1", 1): "b2"}
    # b's steps were written first: the journal's order is not the operations' identity
    order = [r.name for r in journal if r.kind == "step"]
    assert order.index("b2") < order.index("a1")
    assert (await app.verify(run_id)).ok


async def test_nested_task_groups_and_create_task_get_stable_branch_paths(
    app: codara.App,
) -> None:
    ran: Counter[str] = Counter()

    async def work(name: str) -> str:
        ran[name] += 1
        await asyncio.sleep(0.001 * (len(name) % 3))
        return name

    async def leaf(ctx: codara.Context, name: str) -> str:
        return await ctx.step(name, work, name)

    async def pair(ctx: codara.Context) -> list[str]:
        return list(await asyncio.gather(leaf(ctx, "y1"), leaf(ctx, "y22")))

    @app.workflow(name="nested")
    async def nested(ctx: codara.Context, _: None) -> list[str]:
        async with asyncio.TaskGroup() as tg:
            x = tg.create_task(leaf(ctx, "x"))
            y = tg.create_task(pair(ctx))
        await ctx.sleep(0.01)
        z = await asyncio.create_task(leaf(ctx, "z"))
        return [x.result(), *y.result(), z]

    run_id = await app.start_run("nested")
    record = await _settle(app, run_id)
    assert record.status == "completed", record.error
    assert await app.output(run_id) == ["x", "y1", "y22", "z"]
    assert set(ran.values()) == {1}
    paths = {r.name: r.branch for r in await app.journal(run_id) if r.kind == "step"}
    assert paths == {"x": "0", "y1": "1.0", "y22": "1.1", "z": "2"}


async def test_lambda_returning_a_model_is_refused_on_the_first_run(app: codara.App) -> None:
    """Without a declared type, a replay would give a dict: say so at once, not at replay."""

    @app.workflow(name="untyped")
    async def untyped(ctx: codara.Context, _: None) -> None:
        await ctx.step(
            codara.Step("quote", retry=NO_RETRY), lambda: Quote(amount=1, currency="EUR")
        )

    with pytest.raises(codara.RunError) as err:
        await app.run("untyped")
    assert "declares no return type" in str(err.value)
    assert "result_type=Quote" in str(err.value)


async def test_partial_and_result_type_replay_as_the_model(app: codara.App) -> None:
    def quote(amount: float, currency: str) -> Quote:
        return Quote(amount=amount, currency=currency)

    seen: list[Any] = []

    @app.workflow(name="typed")
    async def typed(ctx: codara.Context, _: None) -> str:
        a = await ctx.step("partial", functools.partial(quote, currency="EUR"), 2.5)
        b = await ctx.step(
            codara.Step("lambda", result_type=Quote), lambda: Quote(amount=3, currency="CHF")
        )
        seen.append((type(a), type(b)))
        await ctx.wait_for("go")
        return f"{a.amount}{a.currency}/{b.amount}{b.currency}"

    run_id = await app.start_run("typed")
    await _settle(app, run_id)
    assert await app.output(run_id) == "2.5EUR/3.0CHF"
    assert seen == [(Quote, Quote), (Quote, Quote)]  # first run, then the replay


async def test_now_random_and_uuid_replay_identically(app: codara.App) -> None:
    """Workflow code may branch on ctx.now(), ctx.random() and ctx.uuid4(): the values seen
    on the replay are those of the first run (kept in the journal as a step's arguments)."""

    def mark(values: list[Any]) -> list[Any]:
        return values

    @app.workflow(name="clocky")
    async def clocky(ctx: codara.Context, _: None) -> list[Any]:
        t0 = ctx.now()
        await ctx.step("a", mark, [])
        t1 = ctx.now()
        r, u = ctx.random(), str(ctx.uuid4())
        late = "late" if t1 - t0 > 3600 else "on time"  # branch on time: must replay
        await ctx.step("mark", mark, [t0, t1, r, u, late])
        await ctx.wait_for("go")
        return [t0, t1, r, u, late]

    run_id = await app.start_run("clocky")
    await _settle(app, run_id)
    journal = await app.journal(run_id)
    marked = next(r for r in journal if r.name == "mark")
    output = await app.output(run_id)
    assert codara_input(marked.input) == output
    step_a = next(r for r in journal if r.name == "a")
    assert output[1] == step_a.finished_at  # logical time: when the last operation finished
    assert output[0] <= output[1]
    assert 0 <= output[2] < 1


def codara_input(text: str | None) -> Any:
    import orjson

    assert text is not None
    return orjson.loads(text)[0]


async def test_context_operations_inside_a_step_are_refused(app: codara.App) -> None:
    @app.workflow(name="nesting")
    async def nesting(ctx: codara.Context, _: None) -> None:
        async def inner() -> int:
            return await ctx.step("inner", lambda: 1)

        await ctx.step(codara.Step("outer", retry=NO_RETRY), inner)

    with pytest.raises(codara.RunError) as err:
        await app.run("nesting")
    assert "outside the workflow's own tasks" in str(err.value)


async def test_step_timeout_fails_the_attempt_and_is_journaled(app: codara.App) -> None:
    attempts = Counter[str]()

    async def slow() -> int:
        attempts["slow"] += 1
        await asyncio.sleep(30)
        return 1

    @app.workflow(name="timeout")
    async def timeout(ctx: codara.Context, _: None) -> str:
        try:
            await ctx.step(
                codara.Step("slow", timeout=0.05, retry=codara.RetryPolicy(2, initial_delay=0)),
                slow,
            )
        except codara.StepFailedError as exc:
            return exc.error_type
        return "no timeout"

    assert await app.run("timeout") == "codara.errors.StepTimeoutError"
    assert attempts["slow"] == 2
    row = next(r for r in await app.journal(await _last_run(app)) if r.name == "slow")
    assert row.status == "error"
    assert row.attempts == 2


async def _last_run(app: codara.App) -> str:
    return (await app.store.list_runs(limit=1))[0].id


def test_workflow_calling_wrong_arguments_is_a_type_error_for_mypy() -> None:
    """ctx.step is typed with ParamSpec: mypy checks the function's arguments and result."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    src = textwrap.dedent(
        """
        import codara

        async def count(i: int) -> int:
            return i

        async def wf(ctx: codara.Context, n: int) -> str:
            ok: int = await ctx.step("ok", count, 1)
            bad = await ctx.step("bad", count, "one")
            wrong: str = await ctx.step("wrong", count, 2)
            return str(ok + bad) + wrong
        """
    )
    path = Path(__file__).parent / "_typing_probe.py"
    path.write_text(src)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    finally:
        path.unlink()
    # line 9 passes a str for an int parameter, line 10 assigns the int result to a str;
    # line 8 is right and must pass
    assert "_typing_probe.py:9: error:" in out, out
    assert "_typing_probe.py:10: error:" in out, out
    assert out.count("error:") == 2, out
