"""Cancelling a run after effects happened undoes them: newest first, each once, across a
worker dying in the middle. The run becomes ``cancelling`` (its owner fenced); a worker
replays it up to what it did, without doing anything new, runs the compensations in a
branch of their own, then marks it ``cancelled``. On SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from tests.engine.test_effects import _fence

import codara
from codara import Effect, EffectCall
from codara.config import Settings
from codara.engine import RetryPolicy
from codara.engine._context import set_fault_hook
from codara.store import RunRecord
from codara.trace import verify_chain

FAST = RetryPolicy(max_attempts=3, initial_delay=0.001)
LATER = 4e12  # a lease that lapses long after the test


@dataclass
class Bank:
    paid: dict[str, float] = field(default_factory=dict)
    refunds: list[str] = field(default_factory=list)  # keys, in the order refunded
    calls: list[str] = field(default_factory=list)

    async def pay(self, args: dict[str, Any], call: EffectCall) -> dict[str, Any]:
        self.calls.append(call.key)
        self.paid.setdefault(call.key, args["amount"])
        return {"ref": call.key}

    async def find(self, args: dict[str, Any], call: EffectCall) -> dict[str, Any] | None:
        return {"ref": call.key} if call.key in self.paid else None

    async def refund(self, args: Any, result: Any, call: EffectCall) -> None:
        self.refunds.append(call.key)  # does NOT deduplicate: a second refund is a second one

    async def refunded(self, args: Any, result: Any, call: EffectCall) -> bool:
        return call.key in self.refunds


def _app(url: str, bank: Bank, *, compensated: bool = True) -> codara.App:
    settings = Settings.model_validate({"store": {"url": url, "durability": "os"}})
    app = codara.App(settings=settings, retry=FAST)
    app.effect(Effect(name="pay", run=bank.pay, reconcile=bank.find, compensate=bank.refund,
                      compensated=bank.refunded if compensated else None))  # fmt: skip
    app.effect(Effect(name="note", run=bank.pay))  # nothing to undo: no compensate hook

    @app.workflow(name="order")
    async def order(ctx: codara.Context, n: int) -> str:
        for i in range(n):
            await ctx.effect("pay", {"amount": 10.0 + i})
        await ctx.effect("note", {"amount": 0.0})
        await ctx.wait_for("shipped")
        await ctx.effect("pay", {"amount": 99.0})  # never reached: the run is cancelled first
        return "done"

    return app


async def _until(app: codara.App, run_id: str, *statuses: str) -> RunRecord:
    for _ in range(40):
        await app.work(until_idle=True)
        record = await app.get_run(run_id)
        if record.status in statuses:
            return record
    raise AssertionError(f"run {run_id} is {record.status}, not {statuses}")


async def test_a_cancelled_run_undoes_its_effects_newest_first_then_ends(db_url: str) -> None:
    bank = Bank()
    async with _app(db_url, bank) as app:
        run_id = await app.start_run("order", 3)
        await _until(app, run_id, "waiting")
        assert len(bank.paid) == 4  # three payments and a note
        await app.cancel(run_id)
        assert (await app.get_run(run_id)).status == "cancelling"
        await app.cancel(run_id)  # a second cancel changes nothing
        record = await _until(app, run_id, "cancelled")
        journal = await app.journal(run_id)
        audit = await verify_chain(app.store)
        await app.work(until_idle=True)  # nothing more to do
    pays = [k for k in bank.calls if k != f"{run_id}:r:3"]
    assert bank.refunds == list(reversed(pays)), "newest first, the note not undone"
    assert len(bank.calls) == 4, "nothing new was done after the cancel"
    undo = [(j.branch, j.status) for j in journal if j.kind == "compensate"]
    assert undo == [("cancel", "claimed"), ("cancel", "ok")] * 3
    assert journal[-1].kind == "result"
    assert journal[-1].name == "cancelled"
    assert record.error is None
    assert audit.problems == []


async def test_a_run_without_effects_done_is_cancelled_at_once(db_url: str) -> None:
    bank = Bank()
    async with _app(db_url, bank) as app:
        run_id = await app.start_run("order", 0)
        await app.cancel(run_id)  # queued, nothing done: no worker needed
        assert (await app.get_run(run_id)).status == "cancelled"
        await app.work(until_idle=True)
    assert bank.calls == []


@pytest.mark.parametrize("compensated", [True, False])
async def test_a_worker_dying_mid_undo_undoes_each_effect_once(
    db_url: str, compensated: bool
) -> None:
    """Killed after the second refund ran and before its row: the next worker asks
    ``compensated`` and does not refund it again; without that hook it refunds again with
    the same key (at least once), which is what the hook is for."""
    bank = Bank()
    dead: list[str] = []

    def hook(point: str, name: str) -> None:
        if point == "compensate.executed" and len(bank.refunds) == 2 and not dead:
            dead.append(name)
            _fence(db_url, run_id)

    async with _app(db_url, bank, compensated=compensated) as app:
        run_id = await app.start_run("order", 3)
        await _until(app, run_id, "waiting")
        await app.cancel(run_id)
        set_fault_hook(hook)
        try:
            await _until(app, run_id, "cancelled")
        finally:
            set_fault_hook(None)
    assert dead == ["pay"]
    pays = [k for k in bank.calls if k != f"{run_id}:r:3"]
    expected = list(reversed(pays))
    if not compensated:
        expected.insert(2, expected[1])  # the one under way when the worker died, again
    assert bank.refunds == expected


async def test_an_effect_under_way_at_the_cancel_is_reconciled_then_undone(db_url: str) -> None:
    """The worker dies between the payment and its row; the run is cancelled. The next
    worker does not pay again: it asks ``reconcile``, finds the payment, and refunds it."""
    bank = Bank()
    dead: list[str] = []

    def hook(point: str, name: str) -> None:
        if point == "effect.executed" and len(bank.paid) == 2 and not dead:
            dead.append(name)
            _fence(db_url, run_id, ready_at=LATER)  # its lease not lapsed yet at the cancel

    async with _app(db_url, bank) as app:
        run_id = await app.start_run("order", 3)
        set_fault_hook(hook)
        try:
            await app.work(until_idle=True)  # dies at the second payment
        finally:
            set_fault_hook(None)
        assert dead == ["pay"]
        await app.cancel(run_id)
        await _until(app, run_id, "cancelled")
        rows = [(j.kind, j.status) for j in await app.journal(run_id)]
    assert len(bank.calls) == 2, "the third payment was never made, the second not twice"
    assert bank.refunds == list(reversed(bank.calls))
    assert rows.count(("effect", "ok")) == 2
