"""Steps are journaled once and replayed from the journal, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

import codara
from codara.engine import NO_RETRY, RetryPolicy
from codara.errors import (
    InputError,
    NonDeterminismError,
    StepFailedError,
    UnknownWorkflowError,
    WorkflowVersionError,
)


class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing after it is written."""


class Ticket(BaseModel):
    id: int
    text: str


class Verdict(BaseModel):
    label: str
    confidence: float


async def test_steps_run_in_order_and_the_output_is_stored(app: codara.App) -> None:
    calls: list[int] = []

    def add(x: int) -> int:
        calls.append(x)
        return x + 1

    @app.workflow(name="chain", version="1")
    async def chain(ctx: codara.Context, n: int) -> int:
        acc = 0
        for i in range(n):
            acc = await ctx.step(f"s{i}", add, acc)
        return acc

    assert await app.run("chain", 5) == 5
    assert calls == [0, 1, 2, 3, 4]
    run = (await app.store.list_runs())[0]
    assert run.status == "completed"
    rows = await app.journal(run.id)
    assert [r.name for r in rows] == ["s0", "s1", "s2", "s3", "s4", "completed"]
    assert [r.seq for r in rows] == list(range(6))
    assert rows[-1].kind == "result"


async def test_a_resumed_run_replays_finished_steps_without_running_them(app: codara.App) -> None:
    executed: list[str] = []
    gate = {"crash_after": 2}

    def work(name: str) -> str:
        executed.append(name)
        if name == f"s{gate['crash_after']}" and gate["crash_after"] >= 0:
            gate["crash_after"] = -1
            raise SimulatedCrash
        return name.upper()

    @app.workflow(name="w")
    async def wf(ctx: codara.Context, _: None) -> list[str]:
        return [await ctx.step(f"s{i}", work, f"s{i}") for i in range(4)]

    run_id = await app.start_run("w")
    with pytest.raises(SimulatedCrash):
        await app.resume(run_id)
    assert executed == ["s0", "s1", "s2"]
    # The crashed owner never released its claim: another worker may take it once the
    # lease expires. Expire it by hand.
    await app.store.execute_raw("UPDATE codara_runs SET ready_at = 0 WHERE id = ?", (run_id,))
    outcome = await app.resume(run_id)
    assert outcome.status == "completed"
    assert outcome.output == ["S0", "S1", "S2", "S3"]
    assert executed == ["s0", "s1", "s2", "s2", "s3"], "s0 and s1 must come from the journal"


async def test_replayed_results_are_validated_into_the_declared_return_type(
    app: codara.App,
) -> None:
    seen: list[Any] = []

    def classify(ticket: Ticket) -> Verdict:
        return Verdict(label=ticket.text, confidence=0.5)

    @app.workflow(name="typed")
    async def typed(ctx: codara.Context, ticket: Ticket) -> str:
        verdict = await ctx.step("classify", classify, ticket)
        seen.append(verdict)
        await ctx.sleep(0)
        return verdict.label

    run_id = await app.start_run("typed", {"id": 1, "text": "card_arrival"})
    assert (await app.resume(run_id)).output == "card_arrival"
    # Replay the same run from its journal: the result comes back as a Verdict again.
    await app.store.execute_raw(
        "UPDATE codara_runs SET status = 'queued', ready_at = 0 WHERE id = ?", (run_id,)
    )
    await app.store.execute_raw(
        "DELETE FROM codara_journal WHERE run_id = ? AND kind = 'result'", (run_id,)
    )
    await app.resume(run_id)
    assert isinstance(seen[1], Verdict)
    assert seen[0] == seen[1]


async def test_failing_step_is_retried_then_journaled_as_failed(app: codara.App) -> None:
    attempts = {"n": 0}

    def flaky() -> str:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError("source down")
        return "ok"

    def broken() -> None:
        raise ValueError("bad record")

    @app.workflow(name="retry")
    async def wf(ctx: codara.Context, _: None) -> str:
        first = await ctx.step(
            codara.Step("flaky", retry=RetryPolicy(5, initial_delay=0.001)), flaky
        )
        try:
            await ctx.step(codara.Step("broken", retry=RetryPolicy(2, initial_delay=0.001)), broken)
        except StepFailedError as exc:
            return f"{first}/{exc.error_type}"
        return "unreachable"

    assert await app.run("retry") == "ok/builtins.ValueError"
    assert attempts["n"] == 3
    run = (await app.store.list_runs())[0]
    rows = await app.journal(run.id)
    assert (rows[0].status, rows[0].attempts) == ("ok", 3)
    assert (rows[1].status, rows[1].attempts) == ("error", 2)
    assert "bad record" in (rows[1].error or "")


async def test_non_retryable_errors_are_not_retried(app: codara.App) -> None:
    calls = {"n": 0}

    class Rejected(Exception):
        non_retryable = True

    def refuse() -> None:
        calls["n"] += 1
        raise Rejected("customer closed the account")

    @app.workflow(name="nr")
    async def wf(ctx: codara.Context, _: None) -> None:
        await ctx.step(codara.Step("refuse", retry=RetryPolicy(5, initial_delay=0.001)), refuse)

    with pytest.raises(codara.RunError, match="customer closed the account"):
        await app.run("nr")
    assert calls["n"] == 1
    run = (await app.store.list_runs())[0]
    assert run.status == "failed"
    assert "non_retryable" in (run.error or "")


async def test_a_failed_step_fails_the_same_way_on_replay(app: codara.App) -> None:
    def boom() -> None:
        raise RuntimeError("once")

    results: list[str] = []

    @app.workflow(name="f")
    async def wf(ctx: codara.Context, _: None) -> str:
        try:
            await ctx.step(codara.Step("boom", retry=NO_RETRY), boom)
        except StepFailedError as exc:
            results.append(exc.error_message)
        await ctx.sleep(0)
        return "handled"

    run_id = await app.start_run("f")
    await app.resume(run_id)
    await app.store.execute_raw(
        "UPDATE codara_runs SET status = 'queued', ready_at = 0 WHERE id = ?", (run_id,)
    )
    await app.store.execute_raw(
        "DELETE FROM codara_journal WHERE run_id = ? AND kind = 'result'", (run_id,)
    )
    await app.resume(run_id)
    assert results == ["once", "once"]


async def test_changed_workflow_code_is_reported_as_non_determinism(app: codara.App) -> None:
    shape = {"name": "a"}

    @app.workflow(name="nd")
    async def wf(ctx: codara.Context, _: None) -> None:
        await ctx.step(shape["name"], lambda: 1)
        await ctx.wait_for("never")

    run_id = await app.start_run("nd")
    await app.resume(run_id)
    shape["name"] = "b"
    await app.send_signal(run_id, "other")
    outcome = await app.resume(run_id)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "NonDeterminismError" in outcome.error["type"]
    assert NonDeterminismError.code == "non_determinism"


async def test_input_is_validated_against_the_declared_type(app: codara.App) -> None:
    @app.workflow(name="typed-in")
    async def wf(ctx: codara.Context, ticket: Ticket) -> int:
        return ticket.id

    with pytest.raises(InputError, match="text"):
        await app.start_run("typed-in", {"id": 3})
    assert await app.store.list_runs() == []
    assert await app.run("typed-in", {"id": 3, "text": "x"}) == 3


async def test_unknown_workflow_is_a_clear_error(app: codara.App) -> None:
    with pytest.raises(UnknownWorkflowError, match="no workflow named 'nope'"):
        await app.start_run("nope")


async def test_a_run_keeps_its_version_and_needs_compatible_code(db_url: str) -> None:
    v1 = codara.App(db_url)

    @v1.workflow(name="t", version="1")
    async def t1(ctx: codara.Context, _: None) -> str:
        await ctx.wait_for("go")
        return "v1"

    async with v1:
        run_id = await v1.start_run("t")
        await v1.resume(run_id)

    v2 = codara.App(db_url)

    @v2.workflow(name="t", version="2")
    async def t2(ctx: codara.Context, _: None) -> str:
        await ctx.wait_for("go")
        return "v2"

    async with v2:
        await v2.send_signal(run_id, "go")
        with pytest.raises(WorkflowVersionError, match="version '1'"):
            await v2.resume(run_id)
        # A v2-only worker does not claim the v1 run at all.
        assert await v2.work(until_idle=True) == 0
        assert (await v2.get_run(run_id)).status == "queued"

    v3 = codara.App(db_url)

    @v3.workflow(name="t", version="3", compatible_with=["1"])
    async def t3(ctx: codara.Context, _: None) -> str:
        await ctx.wait_for("go")
        return "v3"

    async with v3:
        await v3.work(until_idle=True)
        record = await v3.get_run(run_id)
        assert record.status == "completed"
        assert record.version == "1"
        assert record.output == '"v3"'


async def test_idempotency_key_starts_a_run_once(app: codara.App) -> None:
    @app.workflow(name="k")
    async def wf(ctx: codara.Context, x: int) -> int:
        return x

    a = await app.start_run("k", 1, key="ticket-42")
    b = await app.start_run("k", 1, key="ticket-42")  # another input: tests/engine/test_ops.py
    assert a == b
    assert len(await app.store.list_runs()) == 1


async def test_start_runs_is_all_or_nothing(app: codara.App) -> None:
    @app.workflow(name="b")
    async def wf(ctx: codara.Context, ticket: Ticket) -> int:
        return ticket.id

    with pytest.raises(InputError, match="text"):
        await app.start_runs("b", [{"id": 1, "text": "ok"}, {"id": 2}])
    assert await app.store.list_runs() == []


async def test_parallel_steps_in_one_run(app: codara.App) -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.01 * (3 - x))
        return x * 10

    @app.workflow(name="par")
    async def wf(ctx: codara.Context, _: None) -> list[int]:
        return list(await asyncio.gather(*(ctx.step(f"p{i}", slow, i) for i in range(3))))

    assert await app.run("par") == [0, 10, 20]
    run = (await app.store.list_runs())[0]
    assert (await app.verify(run.id)).ok
