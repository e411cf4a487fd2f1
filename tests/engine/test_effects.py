"""Effects (``ctx.effect``): the idempotency key is journaled before the handler runs; a
worker that dies between the handler and its result is resolved by ``reconcile`` (or by the
same key again), never by doing the effect twice; refused and invalid calls fail clearly and
are journaled; shadow mode executes nothing; a failed run compensates in reverse order. On
SQLite and PostgreSQL.

The external system is a ledger of ours that records each execution and deduplicates by
key when told to, so the tests count what really happened outside."""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

import codara
from codara import Effect, EffectCall, EffectRefused
from codara.config import Settings
from codara.engine import EffectFailedError, RetryPolicy
from codara.engine._context import set_fault_hook
from codara.store import RunRecord, parse_url
from codara.trace import verify_chain

FAST = RetryPolicy(max_attempts=3, initial_delay=0.001)


@dataclass
class Ledger:
    """An external payments system: executions by key, and what it holds."""

    dedupe: bool = True
    calls: Counter[str] = field(default_factory=Counter)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    undone: list[str] = field(default_factory=list)
    fail_next: list[BaseException] = field(default_factory=list)
    fail_after_doing: list[BaseException] = field(default_factory=list)

    async def pay(self, args: dict[str, Any], call: EffectCall) -> dict[str, Any]:
        self.calls[call.key] += 1
        if self.fail_next:
            raise self.fail_next.pop(0)
        if call.key in self.done and self.dedupe:
            return self.done[call.key]
        self.done[call.key] = {"paid": args["amount"], "ref": f"p{len(self.done) + 1}"}
        if self.fail_after_doing:
            raise self.fail_after_doing.pop(0)
        return self.done[call.key]

    async def lookup(self, args: dict[str, Any], call: EffectCall) -> dict[str, Any] | None:
        return self.done.get(call.key)

    async def refund(self, args: Any, result: Any, call: EffectCall) -> None:
        self.undone.append(call.key)


def _fence(url: str, run_id: str, ready_at: float = 0) -> None:
    """Stands for the worker dying here: from a connection of its own, the run's lease
    lapses (at ``ready_at``) and its fencing token moves on, so nothing more this attempt
    writes lands."""
    sql = f"UPDATE codara_runs SET token = token + 1, ready_at = {float(ready_at)}, owner = NULL "
    sql += "WHERE id = {}"
    parsed = parse_url(url)
    if parsed.dialect == "sqlite":
        assert parsed.sqlite_path is not None
        conn = sqlite3.connect(parsed.sqlite_path, isolation_level=None)
        try:
            conn.execute(sql.format("?"), (run_id,))
        finally:
            conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(sql.format("%s"), (run_id,))


class Payment(BaseModel):
    amount: float
    iban: str


def _app(
    url: str, ledger: Ledger, *, reconcile: bool = True, settings: dict[str, Any] | None = None
) -> codara.App:
    config = Settings.model_validate({"store": {"url": url, "durability": "os"},
                                      **(settings or {})})  # fmt: skip
    app = codara.App(settings=config, retry=FAST)
    app.effect(Effect(
        name="pay", run=ledger.pay, reconcile=ledger.lookup if reconcile else None,
        compensate=ledger.refund, shadow=lambda args: {"paid": 0, "ref": "shadow"},
        args_type=Payment,
    ))  # fmt: skip

    @app.workflow(name="refund")
    async def refund(ctx: codara.Context, req: dict[str, Any]) -> Any:
        paid = await ctx.effect("pay", {"amount": req["amount"], "iban": "GB00TEST"})
        if req.get("wait"):
            await ctx.wait_for("go")
        if req.get("fail"):
            await ctx.effect("pay", {"amount": 1.0, "iban": "GB00TEST"})
            raise ValueError("the ticket was a duplicate")
        return paid

    return app


async def _settle(app: codara.App, run_id: str) -> RunRecord:
    for _ in range(20):
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
        if record.status in ("completed", "failed", "waiting"):
            return record
    raise AssertionError(f"run {run_id} did not settle")


async def test_an_effect_runs_once_with_a_journaled_key(db_url: str) -> None:
    ledger = Ledger()
    async with _app(db_url, ledger) as app:
        run_id = await app.start_run("refund", {"amount": 25.0, "wait": True})
        assert (await _settle(app, run_id)).status == "waiting"
        await app.send_signal(run_id, "go", None)
        record = await _settle(app, run_id)  # the replay passes the effect from the journal
        assert record.status == "completed", record.error
        journal = [(j.kind, j.status) for j in await app.journal(run_id) if j.kind == "effect"]
        rows = [j for j in await app.journal(run_id) if j.kind == "effect"]
        audit = await verify_chain(app.store)
    assert audit.problems == []  # the claim and its result are both in the hash chain
    assert journal == [("effect", "claimed"), ("effect", "ok")]
    [key] = ledger.calls
    assert ledger.calls[key] == 1
    assert key == f"{run_id}:r:0"
    assert codara.engine._codec.decode(rows[0].input) == {
        "key": key, "args": {"amount": 25.0, "iban": "GB00TEST"},
    }  # fmt: skip
    assert codara.engine._codec.decode(rows[1].output)["via"] == "executed"


@pytest.mark.parametrize("reconcile", [True, False])
async def test_a_worker_dying_after_the_effect_never_does_it_twice(
    db_url: str, reconcile: bool
) -> None:
    """Killed between the handler's return and its result row: with reconcile the ledger is
    asked and the handler is not called again; without, it is called again with the same
    key and the ledger's deduplication keeps it to one payment."""
    ledger = Ledger()
    dead: list[str] = []

    def hook(point: str, name: str) -> None:
        if point == "effect.executed" and not dead:
            dead.append(name)
            _fence(db_url, run_id)

    async with _app(db_url, ledger, reconcile=reconcile) as app:
        run_id = await app.start_run("refund", {"amount": 40.0})
        set_fault_hook(hook)
        try:
            record = await _settle(app, run_id)
        finally:
            set_fault_hook(None)
        assert record.status == "completed", record.error
        rows = [j for j in await app.journal(run_id) if j.kind == "effect"]
    assert dead == ["pay"]
    [key] = ledger.calls
    assert len(ledger.done) == 1  # one payment in the external system
    assert ledger.calls[key] == (1 if reconcile else 2)
    assert [r.status for r in rows] == ["claimed", "ok"]
    via = codara.engine._codec.decode(rows[1].output)["via"]
    assert via == ("reconciled" if reconcile else "executed")


async def test_an_exception_is_an_unknown_outcome_reconciled_before_any_retry(
    db_url: str,
) -> None:
    ledger = Ledger(fail_after_doing=[TimeoutError("the bank's answer was lost")])
    async with _app(db_url, ledger) as app:
        run_id = await app.start_run("refund", {"amount": 10.0})
        record = await _settle(app, run_id)
    assert record.status == "completed", record.error
    assert list(ledger.calls.values()) == [1]  # it had happened: asked, not repeated
    ledger2 = Ledger(fail_next=[ConnectionError("refused before anything")])
    async with _app(db_url, ledger2) as app:
        run_id = await app.start_run("refund", {"amount": 11.0})
        record = await _settle(app, run_id)
    assert record.status == "completed", record.error
    assert list(ledger2.calls.values()) == [2]  # it had not: retried with the same key
    assert len(ledger2.done) == 1


async def test_refused_invalid_and_unknown_effects_fail_clearly_and_are_journaled(
    db_url: str,
) -> None:
    ledger = Ledger(fail_next=[EffectRefused("the account is closed")])
    async with _app(db_url, ledger) as app:

        @app.workflow(name="bad")
        async def bad(ctx: codara.Context, what: str) -> Any:
            if what == "invalid":
                return await ctx.effect("pay", {"amount": "lots"})
            return await ctx.effect("nope", {})

        refused = await app.start_run("refund", {"amount": 5.0})
        invalid = await app.start_run("bad", "invalid")
        unknown = await app.start_run("bad", "unknown")
        for run_id in (refused, invalid, unknown):
            assert (await _settle(app, run_id)).status == "failed"
        errors = {r: codara.engine._codec.decode((await app.get_run(r)).error)
                  for r in (refused, invalid, unknown)}  # fmt: skip
        invalid_rows = [(j.status, j.input) for j in await app.journal(invalid)
                        if j.kind == "effect"]  # fmt: skip
        refused_rows = [j.status for j in await app.journal(refused) if j.kind == "effect"]
    assert "was refused: the account is closed" in errors[refused]["message"]
    assert sum(ledger.calls.values()) == 1  # refused: not retried, not reconciled
    assert refused_rows == ["claimed", "error"]
    assert "invalid arguments" in errors[invalid]["message"]
    assert "amount" in errors[invalid]["message"]
    assert "iban" in errors[invalid]["message"]
    assert [s for s, _ in invalid_rows] == ["error"]  # nothing claimed, nothing half-done
    assert "no effect of that name is declared (declared: pay)" in errors[unknown]["message"]


async def test_an_outcome_still_unknown_when_retries_run_out_fails_the_run(
    db_url: str,
) -> None:
    boom: list[BaseException] = [ConnectionError(f"down {i}") for i in range(5)]
    ledger = Ledger(fail_next=boom)
    async with _app(db_url, ledger, reconcile=False) as app:
        run_id = await app.start_run("refund", {"amount": 5.0})
        record = await _settle(app, run_id)
    assert record.status == "failed"
    error = codara.engine._codec.decode(record.error)
    assert "unknown outcome after 3 attempt(s)" in error["message"]
    assert list(ledger.calls.values()) == [3]  # FAST: three attempts, one key


async def test_shadow_mode_executes_nothing(db_url: str) -> None:
    ledger = Ledger()
    shadow = {"workflows": {"refund": {"effects": "shadow"}}}
    async with _app(db_url, ledger, settings=shadow) as app:
        run_id = await app.start_run("refund", {"amount": 99.0})
        record = await _settle(app, run_id)
        rows = [j for j in await app.journal(run_id) if j.kind == "effect"]
    assert record.status == "completed", record.error
    assert codara.engine._codec.decode(record.output) == {"paid": 0, "ref": "shadow"}
    assert ledger.calls == Counter()  # nothing reached the external system
    [row] = rows
    out = codara.engine._codec.decode(row.output)
    assert out["via"] == "shadow"
    assert codara.engine._codec.decode(row.input)["args"] == {"amount": 99.0, "iban": "GB00TEST"}


def test_a_bad_effect_mode_or_declaration_is_refused_at_load(sqlite_url: str) -> None:
    app = _app(sqlite_url, Ledger(), settings={"workflows": {"refund": {"effects": "dry-run"}}})
    with pytest.raises(codara.ConfigError, match='must be "live" or "shadow"'):
        _ = app.effects
    with pytest.raises(codara.ConfigError, match="declared twice"):
        app.effect(Effect(name="pay", run=Ledger().pay))
    with pytest.raises(codara.ConfigError, match="timeout must be more than 0"):
        Effect(name="x", run=Ledger().pay, timeout=0)
    with pytest.raises(codara.ConfigError, match="must be callable"):
        Effect(name="x", run="not a function")  # type: ignore[arg-type]


async def test_a_failed_run_compensates_its_effects_newest_first_once(db_url: str) -> None:
    ledger = Ledger()
    async with _app(db_url, ledger) as app:
        run_id = await app.start_run("refund", {"amount": 30.0, "fail": True})
        record = await _settle(app, run_id)
        assert record.status == "failed"
        await app.work(until_idle=True)  # nothing more to do: compensations are journaled
        kinds = [(j.kind, j.status) for j in await app.journal(run_id)]
    first, second = list(ledger.done)
    assert ledger.undone == [second, first]
    assert kinds.count(("compensate", "ok")) == 2
    assert "duplicate" in codara.engine._codec.decode(record.error)["message"]


async def test_a_run_whose_effects_were_compensated_is_not_retried_as_if_they_stood(
    db_url: str,
) -> None:
    """After a failed run's effects were undone, a retry would replay them from the journal
    as done and complete on a refund the ledger no longer holds: it is refused, saying so."""
    ledger = Ledger()
    app = _app(db_url, ledger)
    crm_down = [True]

    def write_reply() -> str:
        if crm_down:
            raise ConnectionError("the CRM is down")
        return "sent"

    @app.workflow(name="pay-then-reply")
    async def pay_then_reply(ctx: codara.Context, req: dict[str, Any]) -> Any:
        paid = await ctx.effect("pay", {"amount": 30.0, "iban": "GB00TEST"})
        return {"paid": paid, "reply": await ctx.step("reply", write_reply)}

    async with app:
        run_id = await app.start_run("pay-then-reply", {})
        assert (await _settle(app, run_id)).status == "failed"
        [key] = ledger.done
        assert ledger.undone == [key]  # compensated
        crm_down.clear()  # the cause is fixed
        with pytest.raises(codara.ConflictError, match="compensated") as refused:
            await app.retry(run_id, by="ops")
        assert refused.value.hint is not None
        assert "fork" in refused.value.hint
        # a fork from after the payment would replay it as done too; from before, it pays
        with pytest.raises(codara.ConflictError, match=r"(?s)'pay'.*compensated.*seq:0"):
            await app.fork(run_id, from_step="reply", by="ops")
        forked = await app.fork(run_id, from_step="pay", by="ops")
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
        again = await app.get_run(forked)
    assert record.status == "failed"  # not completed on an undone payment
    assert ledger.undone == [key]
    assert again.status == "completed", again.error
    assert len(ledger.done) == 2  # the fork paid anew, under its own key


def test_effect_failed_error_is_a_run_error() -> None:
    err = EffectFailedError("pay", "was refused: no", outcome="refused")
    assert isinstance(err, codara.RunError)
    assert err.non_retryable


async def test_a_slow_effect_beside_a_waiting_branch_runs_once_and_is_not_parked_midway(
    db_url: str,
) -> None:
    """One branch waits for a signal (the run may park), the other's effect takes a while:
    the run is not taken for quiet while the effect is under way."""
    import asyncio

    ledger = Ledger()

    async def slow(args: Any, call: EffectCall) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return await ledger.pay(args, call)

    async with _app(db_url, ledger) as app:
        app.effect(Effect(name="slow", run=slow, reconcile=ledger.lookup))

        @app.workflow(name="both")
        async def both(ctx: codara.Context, _: Any) -> Any:
            paid, go = await asyncio.gather(ctx.effect("slow", {"amount": 3.0}), ctx.wait_for("go"))
            return [paid["paid"], go]

        run_id = await app.start_run("both", None)
        assert (await _settle(app, run_id)).status == "waiting"
        await app.send_signal(run_id, "go", "ok")
        record = await _settle(app, run_id)
        assert record.status == "completed", record.error
        assert codara.engine._codec.decode(record.output) == [3.0, "ok"]
    assert list(ledger.calls.values()) == [1]


async def test_a_result_that_is_not_json_fails_once_without_running_again(
    sqlite_url: str,
) -> None:
    calls: list[str] = []

    async def odd(args: Any, call: EffectCall) -> object:
        calls.append(call.key)
        return object()

    async with _app(sqlite_url, Ledger()) as app:
        app.effect(Effect(name="odd", run=odd))

        @app.workflow(name="odd")
        async def odd_wf(ctx: codara.Context, _: Any) -> Any:
            return await ctx.effect("odd", {})

        run_id = await app.start_run("odd", None)
        record = await _settle(app, run_id)
    assert record.status == "failed"
    assert "not JSON" in codara.engine._codec.decode(record.error)["message"]
    assert len(calls) == 1


async def test_a_reconcile_that_raises_cannot_tell_and_the_key_decides(db_url: str) -> None:
    """The handler's answer was lost and the reconcile is down too: the handler is asked
    again with the same key, and the ledger's deduplication keeps it to one payment."""
    ledger = Ledger(fail_after_doing=[TimeoutError("answer lost")])

    async def broken(args: Any, call: EffectCall) -> None:
        raise ConnectionError("the lookup service is down")

    async with _app(db_url, ledger) as app:
        app.effect(Effect(name="pay2", run=ledger.pay, reconcile=broken))

        @app.workflow(name="pay2")
        async def pay2(ctx: codara.Context, _: Any) -> Any:
            return await ctx.effect("pay2", {"amount": 7.0})

        run_id = await app.start_run("pay2", None)
        record = await _settle(app, run_id)
    assert record.status == "completed", record.error
    assert list(ledger.calls.values()) == [2]  # asked twice, with one key
    assert len(ledger.done) == 1  # paid once


async def test_a_handler_past_its_timeout_is_an_unknown_outcome(sqlite_url: str) -> None:
    import asyncio

    started: list[int] = []

    async def hangs(args: Any, call: EffectCall) -> None:
        started.append(call.attempt)
        await asyncio.sleep(30)

    async def never(args: Any, call: EffectCall) -> None:
        return None  # the bank has no record of it

    async with _app(sqlite_url, Ledger()) as app:
        app.effect(Effect(name="hangs", run=hangs, reconcile=never, timeout=0.05))

        @app.workflow(name="hangs")
        async def hangs_wf(ctx: codara.Context, _: Any) -> Any:
            return await ctx.effect("hangs", {})

        run_id = await app.start_run("hangs", None)
        record = await _settle(app, run_id)
    assert record.status == "failed"
    message = codara.engine._codec.decode(record.error)["message"]
    assert "unknown outcome after 3 attempt(s): TimeoutError" in message
    assert started == [1, 2, 3]  # each attempt with the same key, reconciled in between


async def test_a_retried_run_reconciles_an_effect_whose_outcome_was_unknown(
    db_url: str,
) -> None:
    """The bank timed out three times after taking the payment, with no reconcile to ask:
    the run failed with an unknown outcome. An operator retries it once the bank answers
    again: the same key, reconciled first (the effect now has a reconcile), paid once."""
    ledger = Ledger(fail_after_doing=[TimeoutError("lost")])
    ledger.fail_next = [ConnectionError("down"), ConnectionError("down")]
    async with _app(db_url, ledger, reconcile=False) as app:
        run_id = await app.start_run("refund", {"amount": 12.0})
        assert (await _settle(app, run_id)).status == "failed"
    assert len(ledger.done) == 1  # the third attempt paid; its answer was lost
    async with _app(db_url, ledger, reconcile=True) as app:
        await app.retry(run_id, by="ops")
        record = await _settle(app, run_id)
        rows = [j for j in await app.journal(run_id) if j.kind == "effect"]
    assert record.status == "completed", record.error
    [key] = ledger.calls
    assert ledger.calls[key] == 3  # not called again: reconcile found the payment
    assert len(ledger.done) == 1
    assert [r.status for r in rows] == ["claimed", "error", "ok"]
    assert codara.engine._codec.decode(rows[-1].output)["via"] == "reconciled"


@pytest.mark.parametrize("key", ["", "k" * 201, 42])
async def test_a_bad_key_fails_the_run_clearly_before_anything_is_claimed(
    sqlite_url: str, key: Any
) -> None:
    ledger = Ledger()
    async with _app(sqlite_url, ledger) as app:

        @app.workflow(name="keyed")
        async def keyed(ctx: codara.Context, k: Any) -> Any:
            return await ctx.effect("pay", {"amount": 1.0, "iban": "GB00TEST"}, key=k)

        run_id = await app.start_run("keyed", key)
        record = await _settle(app, run_id)
        rows = [j for j in await app.journal(run_id) if j.kind == "effect"]
    assert record.status == "failed"
    assert "key must be a string of 1 to 200 characters" in (record.error or "")
    assert rows == []
    assert ledger.calls == Counter()
