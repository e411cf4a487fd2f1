"""The `triage` workflow: classify a customer message; answer it automatically when the review
policies allow it (a confident, non-sensitive intent), else ask a person of the right role to
approve, correct or reject the proposed answer; record the outcome."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

import codara
from codara.review import ReviewGate

from .crm import CRM
from .data import Ticket
from .model import Intent, TriageModel


class ReplyProposal(BaseModel):
    """What the workflow proposes to send; a reviewer may correct the intent or the text."""

    intent: str = Field(min_length=1, max_length=100)
    reply: str = Field(min_length=1, max_length=2000)


class Outcome(BaseModel):
    ticket_id: str | None
    intent: str
    """The intent the answer was for (after any reviewer's correction)."""
    predicted: str
    """The model's intent."""
    confidence: float
    action: Literal["auto_reply", "reviewed_reply", "human"]
    policy_outcome: str
    decided_by: list[str]
    reason: str
    reference: str


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
    gate: ReviewGate,
    *,
    sensitive: frozenset[str],
) -> None:
    @app.workflow(name="triage", version="3")
    async def triage(ctx: codara.Context, ticket: Ticket) -> Outcome:
        intent: Intent = await ctx.step("classify", model.classify, ticket.text)
        customer = await ctx.step("crm.customer", crm.customer, ticket.customer())
        is_sensitive = intent.label in sensitive
        proposal = ReplyProposal(intent=intent.label, reply=render_reply(intent.label, customer))
        check = await gate.check(
            ctx,
            "reply",
            proposal,
            inputs={
                "intent": intent.label,
                "confidence": intent.confidence,
                "threshold": intent.threshold,
                "sensitive": is_sensitive,
            },
            context={
                "message": ticket.text,
                "ticket_id": ticket.id,
                "customer_tier": customer.get("tier"),
                "model": intent.model,
            },
            low_risk=not is_sensitive and intent.confidence >= intent.threshold,
        )
        final: ReplyProposal = check.proposal
        reviewers = check.review.reviewers if check.review else []
        if check.go_ahead:
            body = final.reply
            if final.intent != proposal.intent and final.reply == proposal.reply:
                body = render_reply(final.intent, customer)  # intent corrected: answer that
            reference = await ctx.step(
                "reply.send",
                crm.send_reply,
                f"reply:{ctx.run_id}",
                ticket.id,
                ticket.customer(),
                final.intent,
                body,
            )
            action: Literal["auto_reply", "reviewed_reply", "human"] = (
                "auto_reply" if check.outcome == "allowed" else "reviewed_reply"
            )
        else:
            reference = await ctx.step(
                "handoff.queue",
                crm.queue_for_human,
                f"handoff:{ctx.run_id}",
                ticket.id,
                ticket.customer(),
                final.intent,
                intent.confidence,
                str(check.decision.get("reason") or check.outcome),
            )
            action = "human"
        return Outcome(
            ticket_id=ticket.id,
            intent=final.intent,
            predicted=intent.label,
            confidence=intent.confidence,
            action=action,
            policy_outcome=check.outcome,
            decided_by=reviewers,
            reason=_why(check.decision),
            reference=reference,
        )


def _why(decision: dict[str, object]) -> str:
    if decision.get("policy"):
        return str(decision["policy"])
    return "audit sample" if decision.get("sampled") else str(decision.get("outcome"))
