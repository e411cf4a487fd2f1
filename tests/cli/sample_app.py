"""A tiny Codara app the CLI tests load with ``--app sample_app:app``."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

import codara
from codara.engine import NO_RETRY
from codara.review import ReviewGate, load_policies

app = codara.App()


class Ticket(BaseModel):
    text: str
    customer: str = "anonymous"


@app.workflow(name="greet")
async def greet(ctx: codara.Context, data: dict[str, Any] | None) -> dict[str, Any]:
    name = (data or {}).get("name", "world")
    loud = await ctx.step("shout", str.upper, f"hello {name}")
    size = await ctx.step("count", len, loud)
    return {"greeting": loud, "length": size}


@app.workflow(name="triage")
async def triage(ctx: codara.Context, ticket: Ticket) -> dict[str, str]:
    def classify(text: str) -> str:
        return "billing" if "invoice" in text.lower() else "other"

    label = await ctx.step("classify", classify, ticket.text)
    return {"customer": ticket.customer, "label": label}


@app.workflow(name="approval")
async def approval(ctx: codara.Context, _: Any) -> Any:
    await ctx.step("prepare", lambda: "draft")
    decision = await ctx.wait_for("approve")
    return {"decision": decision}


_PAYOUTS = {"payout": {"policy_input": {"amount": "double"}, "policies": [
    {"name": "always", "when": "amount > 0.0", "outcome": "ask", "role": "support"}
]}}  # fmt: skip
_gate = ReviewGate(load_policies(_PAYOUTS, workflow="payout"), workflow="payout")


@app.workflow(name="payout")
async def payout(ctx: codara.Context, amount: float) -> str:
    """Waits for a person to decide a review."""
    result = await _gate.check(ctx, "pay", {"amount": amount}, inputs={"amount": amount})
    return result.outcome


@app.workflow(name="nap")
async def nap(ctx: codara.Context, _: Any) -> str:
    await ctx.sleep(0.3)
    return "rested"


@app.workflow(name="boom")
async def boom(ctx: codara.Context, _: Any) -> None:
    def explode() -> None:
        raise ValueError("the widget exploded")

    await ctx.step(codara.Step("explode", retry=NO_RETRY), explode)


@app.workflow(name="slow")
async def slow(ctx: codara.Context, _: Any) -> str:
    await ctx.step("linger", asyncio.sleep, 60)
    return "done"


SENT: list[str] = []  # the effect's external system, in this process


async def _send(args: dict[str, Any], call: codara.EffectCall) -> str:
    SENT.append(call.key)
    return f"sent {args['to']}"


app.effect(codara.Effect(name="notify", run=_send, shadow=lambda args: "shadow"))


@app.workflow(name="notify")
async def notify(ctx: codara.Context, to: str) -> str:
    result: str = await ctx.effect("notify", {"to": to})
    return result
