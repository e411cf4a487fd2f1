"""Audit sampling after the fact, on SQLite and PostgreSQL: a sampled automatic answer goes
out at once; its audit review is created beside it, carries its sampling probability, is not
closed when the run finishes, never signals the run, and its verdict is kept as a label."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

import codara
from codara.review import Principal, ReviewGate, Reviews, install_reviews, load_policies
from codara.review.policy import sample_point
from codara.testing import FakeClock

RATE = 0.25


def policies(on_timeout: str = "close", **extra: Any) -> dict[str, Any]:
    return {
        "workflows": {
            "answers": {
                "policy_input": {"confidence": "double"},
                "policies": [
                    {
                        "name": "unsure",
                        "when": "confidence < 0.8",
                        "outcome": "ask",
                        "role": "support",
                        "deadline": "1h",
                        "on_timeout": "deny",
                    }
                ],
                "sampling": {
                    "rate": RATE,
                    "role": "audit",
                    "deadline": "72h",
                    "on_timeout": on_timeout,
                    **extra,
                },
            }
        }
    }


class Answer(BaseModel):
    intent: str


AUDITOR = Principal("ada", frozenset({"audit"}))
LEAD = Principal("lee", frozenset({"audit-lead"}))


async def _app(db_url: str, clock: FakeClock, table: dict[str, Any]) -> codara.App:
    app = codara.App(db_url, clock=clock)
    gate = ReviewGate(load_policies(table, workflow="answers"), workflow="answers")
    install_reviews(app)

    @app.workflow(name="answers")
    async def answers(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        result = await gate.check(
            ctx, "reply", Answer(intent=req["intent"]), inputs={"confidence": req["confidence"]}
        )
        return {"outcome": result.outcome, "audit": result.audit_id}

    return app


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[tuple[codara.App, Reviews, FakeClock]]:
    clock = FakeClock()
    app = await _app(db_url, clock, policies())
    async with app:
        yield app, Reviews(app.store, clock), clock


async def _confident_runs(app: codara.App, sampled: int = 3) -> list[str]:
    """Confident runs until at least ``sampled`` of them were picked (run ids are random;
    each is picked with probability RATE), plus at least as many that were not."""
    runs: list[str] = []
    while sum(map(_is_sampled, runs)) < sampled or len(runs) < 2 * sampled:
        assert len(runs) < 500, "sampling at rate 0.25 picks some of 500 runs"
        runs.append(await app.start_run("answers", {"intent": "refund", "confidence": 0.99}))
    await app.work(until_idle=True)
    return runs


def _is_sampled(run_id: str) -> bool:
    return sample_point("answers", f"{run_id}:reply") < RATE


async def test_a_sampled_answer_goes_out_at_once_and_its_audit_waits_beside_it(
    env: tuple[codara.App, Reviews, FakeClock],
) -> None:
    app, reviews, _ = env
    runs = await _confident_runs(app)
    sampled = [r for r in runs if _is_sampled(r)]
    for run_id in runs:
        run = await app.get_run(run_id)
        assert run.status == "completed"  # nobody held: sampled or not, the answer went out
        out = await app.output(run_id)
        assert out["outcome"] == "allowed"
        assert (out["audit"] is not None) == (run_id in sampled)
    audits = await reviews.queue(AUDITOR)
    assert sorted(a.run_id for a in audits) == sorted(sampled)
    for audit in audits:
        assert audit.kind == "audit"
        assert audit.sampling_probability == RATE
        assert audit.proposal == {"intent": "refund"}
    # the sweep closes items of finished runs, but not audits: they judge a finished answer
    assert await reviews.sweep() == 0
    assert len(await reviews.queue(AUDITOR)) == len(sampled)


async def test_an_audit_verdict_is_kept_and_never_signals_the_run(
    env: tuple[codara.App, Reviews, FakeClock],
) -> None:
    app, reviews, _ = env
    await _confident_runs(app)
    first, second, third, *_ = await reviews.queue(AUDITOR)
    await reviews.approve(AUDITOR, first.id, comment="right")
    await reviews.edit(AUDITOR, second.id, {"intent": "card_arrival"}, comment="wrong intent")
    await reviews.reject(AUDITOR, third.id, "wrong_intent", comment="unsafe")
    decided = {i.id: await reviews.get(AUDITOR, i.id) for i in (first, second, third)}
    assert [decided[i.id].outcome for i in (first, second, third)] == [
        "approved",
        "edited",
        "rejected",
    ]
    edited = decided[second.id]
    assert edited.proposal == {"intent": "refund"}  # what went out, kept beside the label
    assert edited.result is not None
    assert edited.result.proposal == {"intent": "card_arrival"}
    for item in (first, second, third):
        run = await app.get_run(item.run_id)
        assert run.status == "completed"
        assert (await app.verify(item.run_id)).ok
        async with app.store.tx() as tx:
            rows = await tx.fetchall(
                "SELECT COUNT(*) FROM codara_signals WHERE run_id = ?", (item.run_id,)
            )
        assert rows[0][0] == 0  # the run was never woken: it had finished, nothing waits


async def test_an_audit_nobody_decides_closes_unlabelled(
    env: tuple[codara.App, Reviews, FakeClock],
) -> None:
    app, reviews, clock = env
    await _confident_runs(app)
    audits = await reviews.queue(AUDITOR)
    clock.advance(72 * 3600 + 1)
    assert await reviews.sweep() == len(audits)
    for audit in audits:
        item = await reviews.get(AUDITOR, audit.id)
        assert item.status == "closed"
        assert item.outcome is None  # no verdict: no label
        assert item.result is None
        history = await reviews.history(AUDITOR, audit.id)
        assert [h["action"] for h in history] == ["create", "expire"]


async def test_an_audit_escalates_then_closes(db_url: str) -> None:
    clock = FakeClock()
    table = policies("escalate", escalate_to="audit-lead", escalation_deadline="24h")
    app = await _app(db_url, clock, table)
    async with app:
        reviews = Reviews(app.store, clock)
        await _confident_runs(app)
        audits = await reviews.queue(AUDITOR)
        assert audits
        clock.advance(72 * 3600 + 1)
        await reviews.sweep()
        assert await reviews.queue(AUDITOR) == []
        moved = await reviews.queue(LEAD)
        assert {i.id for i in moved} == {a.id for a in audits}
        assert all(i.on_timeout == "close" for i in moved)
        await reviews.approve(LEAD, moved[0].id)
        clock.advance(24 * 3600 + 1)
        await reviews.sweep()
        statuses = {i.id: (await reviews.get(LEAD, i.id)).status for i in moved}
        assert statuses[moved[0].id] == "decided"
        assert set(statuses.values()) == {"decided", "closed"} or len(moved) == 1


async def test_an_uncertain_case_still_waits_for_a_person(
    env: tuple[codara.App, Reviews, FakeClock],
) -> None:
    app, reviews, _ = env
    run_id = await app.start_run("answers", {"intent": "refund", "confidence": 0.5})
    await app.work(until_idle=True)
    assert (await app.get_run(run_id)).status == "waiting"
    (item,) = await reviews.queue(Principal("sam", frozenset({"support"})))
    assert item.kind == "decision"
    assert item.sampling_probability is None
