"""Human control cannot be bypassed, on SQLite and PostgreSQL.

A review is decided only by the review service: ``App.send_signal`` refuses the reserved
``review:`` names, the gate takes the decision from the review's own record (never from a
signal's payload, so even a forged ``codara_signals`` row decides nothing), and items of runs
that were cancelled or failed are closed with the run instead of answering a late decision
with success.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import codara
from codara.engine import RESERVED_SIGNAL_PREFIXES
from codara.errors import ConflictError, ForbiddenError, ReservedSignalError
from codara.review import Principal, ReviewGate, Reviews, install_reviews, load_policies
from codara.testing import FakeClock

POLICIES: dict[str, Any] = {
    "workflows": {
        "refunds": {
            "reject_reasons": ["wrong_amount"],
            "policy_input": {"amount": "double"},
            "policies": [
                {
                    "name": "big",
                    "when": "amount > 100.0",
                    "outcome": "ask",
                    "role": "support",
                    "deadline": "1h",
                    "on_timeout": "deny",
                    "four_eyes": True,
                }
            ],
        }
    }
}
ALICE = Principal("alice", frozenset({"support"}))
BOB = Principal("bob", frozenset({"support"}))
FORGED = {
    "outcome": "edited",
    "proposal": {"amount": 9999.0, "note": "forged"},
    "reviewers": ["alice", "bob"],
}


class Refund(BaseModel):
    amount: float
    note: str


class Boom(Exception):
    non_retryable = True


Env = tuple[codara.App, Reviews, FakeClock]


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    clock = FakeClock()
    app = codara.App(db_url, clock=clock)
    gate = ReviewGate(load_policies(POLICIES, workflow="refunds"), workflow="refunds")
    install_reviews(app)

    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        proposal = Refund(amount=req["amount"], note="refund as asked")
        result = await gate.check(ctx, "refund", proposal, inputs={"amount": req["amount"]})
        return {
            "outcome": result.outcome,
            "proposal": result.proposal.model_dump(),
            "reviewers": result.review.reviewers if result.review else [],
        }

    def boom() -> None:
        raise Boom("the other branch broke")

    async def later_boom(ctx: codara.Context) -> None:
        await ctx.sleep(60.0, "a while")
        await ctx.step("boom", boom)

    @app.workflow(name="review_while_failing")
    async def review_while_failing(ctx: codara.Context, req: dict[str, Any]) -> None:
        """One branch waits for a review, the other fails the run meanwhile."""
        proposal = Refund(amount=req["amount"], note="refund as asked")
        await asyncio.gather(
            gate.check(ctx, "refund", proposal, inputs={"amount": req["amount"]}),
            later_boom(ctx),
        )

    async with app:
        yield app, Reviews(app.store, clock), clock


async def _parked(app: codara.App, reviews: Reviews, amount: float = 500.0) -> tuple[str, str]:
    run_id = await app.start_run("refunds", {"amount": amount})
    await app.work(until_idle=True)
    assert (await app.get_run(run_id)).status == "waiting"
    [item] = await reviews.queue(ALICE, run_id=run_id)
    return run_id, item.id


async def _actions(reviews: Reviews, review_id: str) -> list[str]:
    return [h["action"] for h in await reviews.history(ALICE, review_id)]


# -- no signal decides a review ----------------------------------------------------------------
def test_the_reserved_prefixes_are_the_review_signals() -> None:
    from codara.review import review_signal

    assert review_signal("x").startswith(RESERVED_SIGNAL_PREFIXES)


async def test_send_signal_refuses_review_signals(env: Env) -> None:
    """The report: a forged 'edited' signal went out to the customer as if two people
    approved it. Now App.send_signal refuses it and nothing changes."""
    app, reviews, _ = env
    run_id, review_id = await _parked(app, reviews)
    with pytest.raises(ReservedSignalError, match="reserved") as caught:
        await app.send_signal(run_id, f"review:{review_id}", FORGED)
    assert isinstance(caught.value, ForbiddenError)
    assert caught.value.hint is not None
    assert "codara review approve" in caught.value.hint
    await app.work(until_idle=True)
    assert (await app.get_run(run_id)).status == "waiting"
    assert (await reviews.get(ALICE, review_id)).status == "pending"
    assert await _actions(reviews, review_id) == ["create"]
    signals = await app.store.execute_raw(
        "SELECT COUNT(*) FROM codara_signals WHERE run_id = ?", (run_id,)
    )
    assert signals[0][0] == 0
    # the real decision still works and is the one the run acts on
    await reviews.reject(ALICE, review_id, "wrong_amount")
    await app.work(until_idle=True)
    assert (await app.output(run_id))["outcome"] == "rejected"


async def test_a_forged_signal_row_decides_nothing(env: Env) -> None:
    """Someone with write access inserts a review signal and wakes the run. The gate reads the
    review's record in a journaled step, finds it undecided and waits again; when the real
    decision comes, the run replays that journaled answer and acts on the real result."""
    app, reviews, clock = env
    run_id, review_id = await _parked(app, reviews)
    now = clock()
    await app.store.execute_raw(
        "INSERT INTO codara_signals (run_id, name, payload, created_at) VALUES (?, ?, ?, ?)",
        (run_id, f"review:{review_id}", json.dumps(FORGED), now),
    )
    await app.store.execute_raw(
        "UPDATE codara_runs SET status = 'queued', ready_at = ?, "
        "signal_version = signal_version + 1 WHERE id = ?",
        (now, run_id),
    )
    await app.work(until_idle=True)
    assert (await app.get_run(run_id)).status == "waiting", "the forged signal only woke it"
    assert (await reviews.get(ALICE, review_id)).status == "pending"
    assert await _actions(reviews, review_id) == ["create"]

    await reviews.approve(ALICE, review_id)  # four-eyes: one approval is not enough
    await app.work(until_idle=True)
    assert (await app.get_run(run_id)).status == "waiting"
    await reviews.approve(BOB, review_id)
    await app.work(until_idle=True)
    assert await app.output(run_id) == {
        "outcome": "approved",
        "proposal": {"amount": 500.0, "note": "refund as asked"},
        "reviewers": ["alice", "bob"],
    }
    journal = await app.journal(run_id)
    names = [(j.kind, j.name) for j in journal]
    decision_reads = [n for n in names if n[1] == "decision:refund"]
    assert len(decision_reads) == 2, names  # one after the forged wake, one after the real
    first, second = (j for j in journal if j.name == "decision:refund")
    assert json.loads(first.output or "null") is None
    assert json.loads(second.output or "null")["reviewers"] == ["alice", "bob"]
    assert (await app.verify(run_id)).ok


async def test_a_decided_review_acts_on_the_record_not_the_payload(env: Env) -> None:
    """Even a signal row carrying another payload next to a real decision changes nothing:
    what the run receives is the review's stored result."""
    app, reviews, clock = env
    run_id, review_id = await _parked(app, reviews)
    await app.store.execute_raw(
        "INSERT INTO codara_signals (run_id, name, payload, created_at) VALUES (?, ?, ?, ?)",
        (run_id, f"review:{review_id}", json.dumps(FORGED), clock()),
    )
    await reviews.reject(ALICE, review_id, "wrong_amount")
    await app.work(until_idle=True)
    assert (await app.output(run_id))["outcome"] == "rejected"


# -- items of finished runs are closed ---------------------------------------------------------
async def test_cancelling_the_run_closes_its_item_and_a_late_decision_is_refused(
    env: Env,
) -> None:
    app, reviews, _ = env
    run_id, review_id = await _parked(app, reviews)
    await app.cancel(run_id)
    with pytest.raises(ConflictError, match="closed") as caught:
        await reviews.reject(ALICE, review_id, "wrong_amount")
    assert "cancelled" in caught.value.message
    item = await reviews.get(ALICE, review_id)
    assert item.status == "closed"
    history = await reviews.history(ALICE, review_id)
    assert [h["action"] for h in history] == ["create", "close"]
    assert history[1]["detail"] == {"run_status": "cancelled"}
    with pytest.raises(ConflictError, match="closed"):
        await reviews.approve(ALICE, review_id)
    assert await reviews.queue(ALICE) == []
    assert [i.id for i in await reviews.queue(ALICE, status="closed")] == [review_id]


async def test_the_sweep_closes_items_of_cancelled_and_failed_runs(env: Env) -> None:
    app, reviews, clock = env
    cancelled, cancelled_item = await _parked(app, reviews)
    other, other_item = await _parked(app, reviews, 300.0)
    await app.cancel(cancelled)
    await app.work(until_idle=True)  # the worker's housekeeping ticker sweeps
    assert (await reviews.get(ALICE, cancelled_item)).status == "closed"
    assert (await reviews.get(ALICE, other_item)).status == "pending"
    assert [i.id for i in await reviews.queue(ALICE)] == [other_item]
    assert await _actions(reviews, cancelled_item) == ["create", "close"]

    failing = await app.start_run("review_while_failing", {"amount": 700.0})
    await app.work(until_idle=True)
    [item] = await reviews.queue(ALICE, run_id=failing)
    clock.advance(61)  # the other branch wakes and fails the run
    await app.work(until_idle=True)
    assert (await app.get_run(failing)).status == "failed"
    assert await reviews.sweep() == 1  # what every worker's ticker does each poll interval
    closed = await reviews.get(ALICE, item.id)
    assert closed.status == "closed"
    assert (await reviews.history(ALICE, item.id))[-1]["detail"] == {"run_status": "failed"}
    with pytest.raises(ConflictError, match="failed"):
        await reviews.approve(ALICE, item.id)
    assert (await reviews.get(ALICE, other_item)).run_id == other


async def test_a_decision_racing_a_cancel_never_answers_success_for_a_dead_run(
    env: Env,
) -> None:
    """Cancel and approve at once: either the approval came first (decided, then the run was
    cancelled) or the cancel did (the approval is refused and the item closed); never an
    approval reported done that no run will ever read."""
    app, reviews, _ = env
    for _ in range(4):
        run_id, review_id = await _parked(app, reviews, 150.0)
        await reviews.approve(ALICE, review_id)
        results = await asyncio.gather(
            app.cancel(run_id), reviews.approve(BOB, review_id), return_exceptions=True
        )
        item = await reviews.get(ALICE, review_id)
        if isinstance(results[1], BaseException):
            assert isinstance(results[1], ConflictError), results[1]
            assert item.status == "closed"
        else:
            assert item.status == "decided"
            woke = await app.store.execute_raw(
                "SELECT COUNT(*) FROM codara_signals WHERE run_id = ?", (run_id,)
            )
            assert woke[0][0] == 1, "the decision reached the run before it was cancelled"
        assert (await app.get_run(run_id)).status == "cancelled"


# -- the proposal's schema ---------------------------------------------------------------------
class CountedRefund(Refund):
    """Refund that counts how often pydantic is asked for its schema."""

    schema_builds: ClassVar[int] = 0

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        cls.schema_builds += 1
        return super().model_json_schema(*args, **kwargs)


async def test_every_item_carries_the_proposal_schema_built_once_per_type(db_url: str) -> None:
    """Each review item stores its proposal type's JSON schema (an edit is validated against
    it), and the gate builds that schema once per type, not once per item."""
    app = codara.App(db_url, clock=FakeClock())
    gate = ReviewGate(load_policies(POLICIES, workflow="refunds"), workflow="refunds")

    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, req: dict[str, Any]) -> str:
        proposal = CountedRefund(amount=req["amount"], note="refund as asked")
        result = await gate.check(ctx, "refund", proposal, inputs={"amount": req["amount"]})
        return result.outcome

    async with app:
        reviews = Reviews(app.store, app.clock)
        run_ids = [await app.start_run("refunds", {"amount": 200.0 + i}) for i in range(3)]
        await app.work(until_idle=True)
        items = [(await reviews.queue(ALICE, run_id=run_id))[0] for run_id in run_ids]
    expected = Refund.model_json_schema() | {"title": "CountedRefund"}
    expected["description"] = CountedRefund.__doc__
    assert [item.proposal_schema for item in items] == [expected] * 3
    assert CountedRefund.schema_builds == 1
