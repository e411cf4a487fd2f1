"""Simulated reviewers for the demo: they decide each pending review with the dataset's label.

Approve when the proposed intent is the labelled one; otherwise correct the intent (an edit),
so the report can show the outcome with people in the loop. A refund held for finance (the
``payments.refund`` effect's review) is approved as proposed: the policy already refused
what is not the customer's, not settled or more than was charged. Real reviewers use the console
(`codara serve`) or `codara review ...`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import codara
from codara.auth import Users
from codara.review import Principal, Reviews

REVIEWERS = {
    "sim-support": ["support"],
    "sim-fraud": ["fraud", "fraud-lead"],
    "sim-audit": ["audit"],
    "sim-finance": ["finance"],
}


async def decide_pending(
    app: codara.App, on_progress: Callable[[int, int], None] | None = None
) -> list[float]:
    """Decide every open review; return each one's seconds from creation to decision."""
    users = Users(app.store, app.clock)
    for name, roles in REVIEWERS.items():
        await users.add(name, roles)
    people = {role: await users.principal(n) for n, roles in REVIEWERS.items() for role in roles}
    reviews = Reviews(app.store, app.clock)
    admin = Principal("sim-admin", frozenset({"admin"}))
    pending = await reviews.queue(admin, limit=1_000_000)
    waited: list[float] = []
    for done, item in enumerate(pending, start=1):
        run = await app.get_run(item.run_id)
        label = json.loads(run.input).get("label")
        who = people[item.role]
        if item.step.startswith("effect:"):  # an effect's arguments, not a reply
            decided = await reviews.approve(who, item.id, comment="within the refund rules")
        elif label is None or item.proposal.get("intent") == label:
            decided = await reviews.approve(who, item.id, comment="matches the label")
        else:
            corrected = {**item.proposal, "intent": label}
            decided = await reviews.edit(who, item.id, corrected, comment=f"intent is {label}")
        if decided.decided_at is not None:
            waited.append(decided.decided_at - decided.created_at)
        if on_progress is not None:
            on_progress(done, len(pending))
    return waited


async def settle(app: codara.App, *, rounds: int = 4) -> list[float]:
    """Work until nothing is ready, deciding what people must decide, until nothing waits
    for a person (a reviewed refund request can stop again, at its refund's review)."""
    waited: list[float] = []
    await app.work(until_idle=True)
    for _ in range(rounds):
        if not await Reviews(app.store, app.clock).counts(Principal("sim", frozenset({"admin"}))):
            break
        waited += await decide_pending(app)
        await app.work(until_idle=True)
    return waited
