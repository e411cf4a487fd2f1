"""The `triage` workflow: classify a customer message, then answer it automatically when the
intent is confident and not sensitive, else hand it to a person; record the outcome."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

import codara

from .crm import CRM
from .data import Ticket
from .model import Intent, TriageModel
from .settings import DEFAULT_SENSITIVE


class Decision(BaseModel):
    action: Literal["auto_reply", "human"]
    reason: str


class Outcome(BaseModel):
    ticket_id: str | None
    intent: str
    confidence: float
    action: Literal["auto_reply", "human"]
    reason: str
    reference: str


def decide(intent: Intent, *, threshold: float, sensitive: frozenset[str]) -> Decision:
    """Pure and deterministic, so a replay takes the same branch."""
    if intent.label in sensitive:
        return Decision(action="human", reason="sensitive intent")
    if intent.confidence < threshold:
        return Decision(
            action="human", reason=f"confidence {intent.confidence:.2f} below {threshold:.2f}"
        )
    return Decision(action="auto_reply", reason=f"confidence {intent.confidence:.2f}")


def render_reply(intent: str, customer: dict[str, object]) -> str:
    topic = intent.replace("_", " ")
    tier = customer.get("tier")
    line = " As a premium customer you can also call us any time." if tier == "premium" else ""
    return (
        f"Hello, thank you for your message about {topic}. We have put the steps for this in "
        f"the Help section of the app under '{topic}', and our team will follow up if anything "
        f"is still unclear.{line}"
    )


def register(
    app: codara.App,
    model: TriageModel,
    crm: CRM,
    *,
    sensitive: frozenset[str] = frozenset(DEFAULT_SENSITIVE),
) -> None:
    @app.workflow(name="triage", version="1")
    async def triage(ctx: codara.Context, ticket: Ticket) -> Outcome:
        intent = await ctx.step("classify", model.classify, ticket.text)
        customer = await ctx.step("crm.customer", crm.customer, ticket.customer())
        decision = decide(intent, threshold=model.threshold, sensitive=sensitive)
        if decision.action == "auto_reply":
            body = render_reply(intent.label, customer)
            reference = await ctx.step(
                "reply.send",
                crm.send_reply,
                f"reply:{ctx.run_id}",
                ticket.id,
                ticket.customer(),
                intent.label,
                body,
            )
        else:
            reference = await ctx.step(
                "handoff.queue",
                crm.queue_for_human,
                f"handoff:{ctx.run_id}",
                ticket.id,
                ticket.customer(),
                intent.label,
                intent.confidence,
                decision.reason,
            )
        return Outcome(
            ticket_id=ticket.id,
            intent=intent.label,
            confidence=intent.confidence,
            action=decision.action,
            reason=decision.reason,
            reference=reference,
        )
