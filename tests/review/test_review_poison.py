"""One bad row never blocks the others: a poisoned review item (a payload the service cannot
read or write back) is logged and skipped by the sweep and the queue, on SQLite and PostgreSQL;
an edit the service cannot store is refused before anything is written."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

import codara
from codara.errors import InputError
from codara.review import Principal, ReviewGate, Reviews, install_reviews, load_policies
from codara.testing import FakeClock

POLICIES: dict[str, Any] = {
    "workflows": {
        "refunds": {
            "policy_input": {"confidence": "double"},
            "policies": [
                {
                    "name": "unsure",
                    "when": "confidence < 0.8",
                    "outcome": "ask",
                    "role": "support",
                    "deadline": "1h",
                    "on_timeout": "deny",
                },
            ],
        }
    }
}
ALICE = Principal("alice", frozenset({"support"}))
OPERATOR = Principal("olga", frozenset({"operator"}))
# proposals the service cannot use: not JSON, and JSON holding a lone surrogate
POISONS = ["{not json", '{"amount": 1.0, "note": "\\ud800"}']


class Refund(BaseModel):
    amount: float
    note: str


Env = tuple[codara.App, Reviews, FakeClock]


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    clock = FakeClock()
    app = codara.App(db_url, clock=clock)
    gate = ReviewGate(load_policies(POLICIES, workflow="refunds"), workflow="refunds")
    install_reviews(app)

    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        result = await gate.check(
            ctx, "refund", Refund(amount=req["amount"], note="as asked"),
            inputs={"confidence": 0.5},
        )  # fmt: skip
        return {"outcome": result.outcome}

    async with app:
        yield app, Reviews(app.store, clock), clock


async def _review(app: codara.App, amount: float) -> tuple[str, str]:
    run_id = await app.start_run("refunds", {"amount": amount})
    await app.work(until_idle=True)
    rows = await app.store.execute_raw("SELECT id FROM codara_reviews WHERE run_id = ?", (run_id,))
    return run_id, str(rows[0][0])


@pytest.mark.parametrize("poison", POISONS)
async def test_the_sweep_skips_a_poisoned_item_and_handles_the_rest(
    env: Env, poison: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, reviews, clock = env
    _, bad = await _review(app, 1.0)  # due first
    clock.advance(10)
    healthy_run, healthy = await _review(app, 2.0)
    await app.store.execute_raw(
        "UPDATE codara_reviews SET proposal = ? WHERE id = ?", (poison, bad)
    )
    clock.advance(3700)
    handled = await reviews.sweep()  # does not raise
    assert handled == 1
    assert (await reviews.get(ALICE, healthy)).status == "decided"
    await app.work(until_idle=True)
    assert (await app.output(healthy_run))["outcome"] == "rejected"
    assert any(bad in r.getMessage() for r in caplog.records)
    rows = await app.store.execute_raw("SELECT status FROM codara_reviews WHERE id = ?", (bad,))
    assert rows[0][0] == "pending"  # left as it was, for an operator to look at
    # the queue lists the healthy items, skipping the unreadable one
    _, fresh = await _review(app, 3.0)
    ids = [i.id for i in await reviews.queue(OPERATOR, status="open")]
    assert fresh in ids


@pytest.mark.parametrize(
    ("proposal", "comment"),
    [
        ({"amount": 1.0, "note": "x\ud800"}, None),
        ({"amount": 1.0, "note": "fine"}, "x\udfff"),
        ({"amount": math.nan, "note": "fine"}, None),
        ({"amount": math.inf, "note": "fine"}, None),
        ({"amount": 1.0, "note\ud800": "fine"}, None),
    ],
)
async def test_an_edit_that_cannot_be_stored_is_refused_before_any_write(
    env: Env, proposal: Any, comment: str | None
) -> None:
    app, reviews, _ = env
    run_id, review_id = await _review(app, 1.0)
    before = await reviews.history(ALICE, review_id)
    with pytest.raises(InputError):
        await reviews.edit(ALICE, review_id, proposal, comment=comment)
    assert await reviews.history(ALICE, review_id) == before
    item = await reviews.get(ALICE, review_id)
    assert item.status == "pending"
    await reviews.edit(ALICE, review_id, {"amount": 1.5, "note": "fine"})
    await app.work(until_idle=True)
    assert (await app.output(run_id))["outcome"] == "edited"
