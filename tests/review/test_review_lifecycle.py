"""Reviews end to end on SQLite and PostgreSQL: a policy asks, people decide, the run resumes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

import codara
from codara.errors import ConflictError, InputError
from codara.review import Principal, ReviewGate, Reviews, install_reviews, load_policies
from codara.review._service import ForbiddenError
from codara.testing import FakeClock

POLICIES: dict[str, Any] = {
    "workflows": {
        "refunds": {
            "reject_reasons": ["wrong_amount", "fraud_suspected"],
            "policy_input": {"amount": "double", "confidence": "double"},
            "policies": [
                {
                    "name": "big",
                    "when": "amount > 500.0",
                    "outcome": "ask",
                    "role": "finance",
                    "deadline": "2h",
                    "on_timeout": "escalate",
                    "escalate_to": "finance-lead",
                    "escalation_deadline": "1h",
                    "four_eyes": True,
                },
                {
                    "name": "unsure",
                    "when": "confidence < 0.8",
                    "outcome": "ask",
                    "role": "support",
                    "deadline": "1h",
                    "on_timeout": "deny",
                },
                {"name": "huge", "when": "amount > 100000.0", "outcome": "deny"},
            ],
        }
    }
}


class Refund(BaseModel):
    amount: float
    note: str


ALICE = Principal("alice", frozenset({"support"}))
BOB = Principal("bob", frozenset({"support", "finance"}))
CAROL = Principal("carol", frozenset({"finance"}))
LEAD = Principal("lee", frozenset({"finance-lead"}))


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[tuple[codara.App, Reviews, FakeClock]]:
    clock = FakeClock()
    app = codara.App(db_url, clock=clock)
    gate = ReviewGate(load_policies(POLICIES, workflow="refunds"), workflow="refunds")
    install_reviews(app)

    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        proposal = Refund(amount=req["amount"], note="refund as asked")
        result = await gate.check(
            ctx,
            "refund",
            proposal,
            inputs={"amount": req["amount"], "confidence": req["confidence"]},
            context={"customer": "C-1"},
        )
        return {
            "outcome": result.outcome,
            "amount": result.proposal.amount if result.go_ahead else None,
            "reviewers": result.review.reviewers if result.review else [],
        }

    async with app:
        yield app, Reviews(app.store, clock), clock


async def _start(app: codara.App, amount: float, confidence: float = 0.99) -> str:
    run_id = await app.start_run("refunds", {"amount": amount, "confidence": confidence})
    await app.work(until_idle=True)
    return run_id


async def test_allowed_and_denied_need_nobody(env: tuple[codara.App, Reviews, FakeClock]) -> None:
    app, reviews, _ = env
    ok = await _start(app, 20.0)
    no = await _start(app, 200_000.0, confidence=0.95)
    assert (await app.output(ok))["outcome"] == "allowed"
    # first match decides: 'big' fires before 'huge'
    assert (await app.get_run(no)).status == "waiting"
    assert await reviews.queue(ALICE) == []


async def test_approve_edit_reject_resume_the_run(
    env: tuple[codara.App, Reviews, FakeClock],
) -> None:
    app, reviews, _ = env
    runs = [await _start(app, 50.0, confidence=0.5) for _ in range(3)]
    items = await reviews.queue(ALICE)
    assert len(items) == 3
    assert all(i.role == "support" and i.policy == "unsure" for i in items)
    by_run = {i.run_id: i for i in items}
    await reviews.approve(ALICE, by_run[runs[0]].id)
    await reviews.edit(ALICE, by_run[runs[1]].id, {"amount": 45.0, "note": "partial"})
    with pytest.raises(InputError, match="not one of"):
        await reviews.reject(ALICE, by_run[runs[2]].id, "no_reason")
    await reviews.reject(ALICE, by_run[runs[2]].id, "wrong_amount", comment="asked twice")
    await app.work(until_idle=True)
    outs = [await app.output(r) for r in runs]
    assert outs[0] == {"outcome": "approved", "amount": 50.0, "reviewers": ["alice"]}
    assert outs[1] == {"outcome": "edited", "amount": 45.0, "reviewers": ["alice"]}
    assert outs[2]["outcome"] == "rejected"
    edited = await reviews.get(ALICE, by_run[runs[1]].id)
    assert edited.result is not None
    assert edited.result.diff == [
        {"path": "amount", "op": "replace", "before": 50.0, "after": 45.0},
        {"path": "note", "op": "replace", "before": "refund as asked", "after": "partial"},
    ]
    history = await reviews.history(ALICE, by_run[runs[2]].id)
    assert [h["action"] for h in history] == ["create", "reject"]
    assert history[1]["detail"]["reason_code"] == "wrong_amount"
    for r in runs:
        assert (await app.verify(r)).ok


async def test_an_invalid_edit_is_refused_and_nothing_changes(
    env: tuple[codara.App, Reviews, FakeClock],
) -> None:
    app, reviews, _ = env
    await _start(app, 50.0, confidence=0.5)
    [item] = await reviews.queue(ALICE)
    with pytest.raises(InputError, match="amount"):
        await reviews.edit(ALICE, item.id, {"amount": "lots", "note": "x"})
    assert (await reviews.get(ALICE, item.id)).status == "pending"


async def test_roles_route_items(env: tuple[codara.App, Reviews, FakeClock]) -> None:
    app, reviews, _ = env
    await _start(app, 900.0)
    assert await reviews.queue(ALICE) == []
    [item] = await reviews.queue(CAROL)
    with pytest.raises(ForbiddenError):
        await reviews.get(ALICE, item.id)
    with pytest.raises(ForbiddenError):
        await reviews.approve(ALICE, item.id)


async def test_four_eyes_needs_two_distinct_reviewers(
    env: tuple[codara.App, Reviews, FakeClock],
) -> None:
    app, reviews, _ = env
    run_id = await _start(app, 900.0)
    [item] = await reviews.queue(CAROL)
    assert item.approvals_required == 2
    await reviews.approve(CAROL, item.id)
    with pytest.raises(ConflictError, match="already approved"):
        await reviews.approve(CAROL, item.id)
    await app.work(until_idle=True)
    assert (await app.get_run(run_id)).status == "waiting"
    await reviews.approve(BOB, item.id)
    await app.work(until_idle=True)
    assert (await app.output(run_id))["reviewers"] == ["bob", "carol"]


async def test_the_initiator_may_not_approve(env: tuple[codara.App, Reviews, FakeClock]) -> None:
    app, reviews, _ = env
    await app.start_run("refunds", {"amount": 900.0, "confidence": 0.9}, started_by="carol")
    await app.work(until_idle=True)
    [item] = await reviews.queue(CAROL)
    with pytest.raises(ForbiddenError, match="four-eyes"):
        await reviews.approve(CAROL, item.id)


async def test_two_reviewers_at_once_one_wins(env: tuple[codara.App, Reviews, FakeClock]) -> None:
    app, reviews, _ = env
    run_id = await _start(app, 50.0, confidence=0.5)
    [item] = await reviews.queue(ALICE)
    other = Principal("dan", frozenset({"support"}))
    results = await asyncio.gather(
        reviews.approve(ALICE, item.id, version=item.version),
        reviews.reject(other, item.id, "wrong_amount", version=item.version),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, ConflictError)]
    assert (len(wins), len(losses)) == (1, 1)
    await app.work(until_idle=True)
    assert (await app.get_run(run_id)).status == "completed"
    signals = await app.store.execute_raw(
        "SELECT COUNT(*) FROM codara_signals WHERE run_id = ?", (run_id,)
    )
    assert signals[0][0] == 1, "decided exactly once"


async def test_claims_reserve_an_item(env: tuple[codara.App, Reviews, FakeClock]) -> None:
    app, reviews, clock = env
    await _start(app, 50.0, confidence=0.5)
    [item] = await reviews.queue(ALICE)
    other = Principal("dan", frozenset({"support"}))
    await reviews.claim(ALICE, item.id, ttl=60)
    with pytest.raises(ConflictError, match="claimed by alice"):
        await reviews.approve(other, item.id)
    clock.advance(61)  # the reservation lapses
    await reviews.approve(other, item.id)


async def test_deadline_default_and_escalation(
    env: tuple[codara.App, Reviews, FakeClock],
) -> None:
    app, reviews, clock = env
    unsure = await _start(app, 50.0, confidence=0.5)
    big = await _start(app, 900.0)
    clock.advance(3601)  # 'unsure' passed its 1h deadline while no worker ran
    await app.work(until_idle=True)
    assert (await app.output(unsure))["outcome"] == "rejected"
    assert [i.role for i in await reviews.queue(CAROL)] == ["finance"]
    clock.advance(3600)  # 'big' passed its 2h deadline: escalated, not decided
    await app.work(until_idle=True)
    assert (await app.get_run(big)).status == "waiting"
    [escalated] = await reviews.queue(LEAD)
    assert escalated.role == "finance-lead"
    assert escalated.escalation_level == 1
    assert await reviews.queue(CAROL) == []
    clock.advance(3601)
    await app.work(until_idle=True)
    assert (await app.output(big))["outcome"] == "rejected"
    final = await reviews.get(LEAD, escalated.id)
    assert final.result is not None
    assert final.result.by_deadline
