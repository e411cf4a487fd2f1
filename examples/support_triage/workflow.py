"""The workload's two workflows.

``intake`` reads the inbox through the governed ``inbox`` source (masked, checked against
``records.InboxTicket``; bad rows quarantined by the source), quarantines a ticket id seen
twice, and starts one ``triage`` run per ticket (keyed by the ticket id, so an intake
executed again starts nothing twice).

``triage`` reads the customer (source ``crm``) and their recent transactions (source
``payments``), classifies the message, and answers it automatically when the review
policies allow it (a confident, non-sensitive intent on fresh, clean data); else a person
of the right role approves, corrects or rejects the proposed answer. A ticket whose
customer the CRM does not know is quarantined, not guessed at.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

import codara
from codara.engine import EffectFailedError
from codara.errors import ConflictError
from codara.review import ReviewGate

from .crm import CRM
from .data import Ticket
from .model import Intent, TriageModel
from .payments import Payments, RefundArgs

CUSTOMER = "SELECT id, name, email, iban, tier, country, updated_at FROM customers WHERE id = :id"
"""The customer record: its personal columns come masked (tokens), see codara.toml."""

_TX = (
    "SELECT t.id, t.customer_id, t.card_id, c.pan, t.amount_cents, t.currency, t.merchant, "
    "t.status, t.at FROM transactions t JOIN cards c ON c.id = t.card_id "
)
RECENT = _TX + "WHERE t.customer_id = :customer ORDER BY t.at DESC, t.id DESC LIMIT 5"
"""The customer's five latest card transactions, for the reviewer's context."""

LATEST = _TX + "WHERE t.customer_id = :customer ORDER BY t.at DESC, t.id DESC LIMIT 1"
"""The transaction a refund request is taken to be about: the customer's latest."""

NAMED = _TX + "WHERE t.id = :id"
"""The transaction a message names ("transaction 123"): whoever's it is, the refund policy
compares its owner with the ticket's customer."""

REFUND_INTENT = "request_refund"
"""The intent whose answer is a refund through the payments service."""

_NAMED_TX = re.compile(r"\b(?:transaction|payment|charge)\s+(?:no\.?\s*|#\s*)?(\d{1,9})\b", re.I)
_AMOUNT = re.compile(
    r"(?:(?:[€£$]|\b(?:EUR|GBP|USD))\s?(\d{1,7}(?:[.,]\d{1,2})?)\b"
    r"|\b(\d{1,7}(?:[.,]\d{1,2})?)\s?(?:[€£$]|(?:EUR|GBP|USD|euros?|pounds?|dollars?)\b))",
    re.I,
)


class ReplyArgs(BaseModel):
    """What the ``reply.send`` effect writes to the CRM's outbox."""

    ticket_id: str | None
    customer_id: int
    intent: str
    body: str


class HandoffArgs(BaseModel):
    """What the ``handoff.queue`` effect writes to the CRM's human queue."""

    ticket_id: str | None
    customer_id: int
    intent: str
    confidence: float
    reason: str


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
    action: Literal["auto_reply", "reviewed_reply", "human", "quarantined"]
    policy_outcome: str
    decided_by: list[str]
    reason: str
    reference: str
    stale_data: bool = False
    """A record the decision used was older than its source's max_age."""
    refund: RefundOutcome | None = None
    """For a refund request (intent ``request_refund``) the reply was cleared for."""


class RefundOutcome(BaseModel):
    """What became of a refund request."""

    status: Literal["refunded", "shadow", "denied", "refused", "no_transaction"]
    transaction_id: int | None = None
    amount_cents: int | None = None
    currency: str | None = None
    refund_id: str | None = None
    reason: str | None = None
    """Why it was not made: the policy or reviewer (denied), the service (refused)."""


class IntakeRequest(BaseModel):
    pattern: str = Field(default="*.csv", min_length=1, max_length=200)
    """Which files of the inbox source to take (a glob under its root)."""


class IntakeSummary(BaseModel):
    accepted: int
    """Rows the inbox source accepted."""
    quarantined_by_source: int
    """Rows the source refused (and quarantined)."""
    duplicates: int
    """Accepted rows whose ticket id came before (quarantined here)."""
    runs: int
    """Triage runs for the rest (started now, or by an earlier intake of the same ticket)."""


def render_reply(intent: str, customer: dict[str, Any]) -> str:
    topic = intent.replace("_", " ")
    tier = customer.get("tier")
    line = " As a premium customer you can also call us any time." if tier == "premium" else ""
    return (
        f"Hello, thank you for your message about {topic}. We have put the steps for this in "
        f"the Help section of the app under '{topic}', and our team will follow up if anything "
        f"is still unclear.{line}"
    )


def render_refund(refund: RefundOutcome) -> str:
    amount = f"{(refund.amount_cents or 0) / 100:.2f} {refund.currency}"
    return (
        f"Hello, we have refunded {amount} of transaction {refund.transaction_id} to the card "
        "it was paid with. It shows on your account within 5 working days."
    )


def asked_amount(text: str) -> int | None:
    """The amount, in cents, a message asks for ("a refund of 25.90 EUR"), if it names one.
    The customer's words: the refund policy caps it at what was charged."""
    found = _AMOUNT.search(text)
    if found is None:
        return None
    whole, _, cents = (found.group(1) or found.group(2)).replace(",", ".").partition(".")
    return int(whole) * 100 + int(cents.ljust(2, "0") or 0)


def register(
    app: codara.App,
    model: TriageModel,
    crm: CRM,
    payments: Payments,
    gate: ReviewGate,
    *,
    sensitive: frozenset[str],
) -> None:
    async def start_triage(rows: list[dict[str, Any]]) -> dict[str, Any]:
        """One triage run per ticket, keyed by its id; the ids another intake started with
        another message come back as conflicts."""
        keys = [f"inbox:{r['id']}" for r in rows]
        try:
            await app.start_runs("triage", rows, keys=keys)
            return {"runs": len(rows), "conflicts": []}
        except ConflictError:  # all or none: find which, start the others
            conflicts = []
            for row, key in zip(rows, keys, strict=True):
                try:
                    await app.start_run("triage", row, key=key)
                except ConflictError:
                    conflicts.append(row["id"])
            return {"runs": len(rows) - len(conflicts), "conflicts": conflicts}

    @app.workflow(name="intake", version="1")
    async def intake(ctx: codara.Context, request: IntakeRequest) -> IntakeSummary:
        seen: set[str] = set()
        accepted = refused = duplicates = runs = 0
        async for batch in ctx.read_batches("inbox", request.pattern):
            accepted += len(batch.rows)
            refused += batch.quarantined
            fresh = []
            for row in batch.rows:
                ticket_id = str(row["id"])
                if ticket_id in seen:
                    duplicates += 1
                    await ctx.quarantine(
                        "inbox", row, rule="duplicate_id", where=f"ticket {ticket_id}",
                        reason=f"ticket id {ticket_id} came before in this inbox",
                    )  # fmt: skip
                    continue
                seen.add(ticket_id)
                fresh.append(row)
            if fresh:
                started = await ctx.step("triage.start", start_triage, fresh)
                runs += int(started["runs"])
                for ticket_id in started["conflicts"]:
                    duplicates += 1
                    row = next(r for r in fresh if r["id"] == ticket_id)
                    await ctx.quarantine(
                        "inbox", row, rule="duplicate_id", where=f"ticket {ticket_id}",
                        reason=f"an earlier intake took ticket id {ticket_id} with another "
                        "message",
                    )  # fmt: skip
        return IntakeSummary(
            accepted=accepted, quarantined_by_source=refused, duplicates=duplicates, runs=runs
        )

    # What the triage does to the CRM is an effect (docs/effects.md): its key is journaled
    # before the write, the CRM deduplicates by it, and after a crash in between the
    # effect asks the CRM whether the write landed before writing again. In shadow mode
    # ([workflows.triage] effects = "shadow") nothing is written.
    async def send_reply(args: dict[str, Any], call: codara.EffectCall) -> str:
        return await crm.send_reply(call.key, **args)

    async def reply_sent(args: dict[str, Any], call: codara.EffectCall) -> str | None:
        return call.key if await crm.has_reply(call.key) else None

    async def queue_handoff(args: dict[str, Any], call: codara.EffectCall) -> str:
        return await crm.queue_for_human(call.key, **args)

    async def handoff_queued(args: dict[str, Any], call: codara.EffectCall) -> str | None:
        return call.key if await crm.has_handoff(call.key) else None

    app.effect(codara.Effect(
        name="reply.send", run=send_reply, reconcile=reply_sent,
        shadow=lambda args: "shadow:reply", args_type=ReplyArgs,
    ))  # fmt: skip
    app.effect(codara.Effect(
        name="handoff.queue", run=queue_handoff, reconcile=handoff_queued,
        shadow=lambda args: "shadow:handoff", args_type=HandoffArgs,
    ))  # fmt: skip

    # A refund goes to the payments service, a system of its own, under the key
    # refund:RUN: the service deduplicates by it and answers "was it made?" for the
    # reconcile; a refund of a run that fails afterwards is cancelled (compensated). The
    # policies of [effects."payments.refund"] decide first, on facts Codara read itself.
    app.effect(codara.Effect(
        name="payments.refund", run=payments.refund, reconcile=payments.find,
        compensate=payments.cancel, compensated=payments.cancelled, args_type=RefundArgs,
        shadow=lambda args: {"refund_id": "shadow", "transaction_id": args["transaction_id"],
                             "amount_cents": args["amount_cents"], "currency": args["currency"]},
        retry=codara.RetryPolicy(max_attempts=4), timeout=10.0,
    ))  # fmt: skip

    async def refund(ctx: codara.Context, ticket: Ticket, customer_id: int) -> RefundOutcome:
        """Refund the transaction the ticket is about (the one it names, else the customer's
        latest), read through the governed ``payments`` source: that read is the policy's
        facts, so it must be the run's latest read of the source."""
        named = _NAMED_TX.search(ticket.text)
        if named:
            found = await ctx.read("payments", NAMED, id=int(named.group(1)))
        else:
            found = await ctx.read("payments", LATEST, customer=customer_id)
        tx = found.one()
        if tx is None:
            why = "it broke the payments source's rules" if found.quarantined else "none found"
            return RefundOutcome(
                status="no_transaction", reason=f"no refundable transaction: {why}"
            )
        args = RefundArgs(
            ticket_id=ticket.id,
            customer_id=customer_id,
            transaction_id=tx["id"],
            card_id=tx["card_id"],
            amount_cents=asked_amount(ticket.text) or tx["amount_cents"],
            currency=tx["currency"],
        )
        asked = RefundOutcome(status="refunded", transaction_id=args.transaction_id,
                              amount_cents=args.amount_cents, currency=args.currency)  # fmt: skip
        try:
            done = await ctx.effect(
                "payments.refund", args.model_dump(), key=f"refund:{ctx.run_id}"
            )
        except EffectFailedError as exc:
            if exc.outcome not in ("denied", "refused"):
                raise  # unknown: the run fails, saying to check the service for the key
            return asked.model_copy(update={"status": exc.outcome, "reason": exc.message})
        status: Literal["refunded", "shadow"] = (
            "shadow" if done["refund_id"] == "shadow" else "refunded"
        )
        return RefundOutcome(status=status, **{k: done[k] for k in _REFUND_FIELDS})

    @app.workflow(name="triage", version="7")
    async def triage(ctx: codara.Context, ticket: Ticket) -> Outcome:
        # classify first: the runs that start together reach the model together, batched
        intent: Intent = await ctx.step("classify", model.classify, ticket.text)
        customer_id = ticket.customer()
        found = await ctx.read("crm", CUSTOMER, id=customer_id)
        record = found.one()
        if record is None and not found.quarantined:
            reference = await ctx.quarantine(
                "inbox",
                ticket.model_dump(mode="json", exclude_none=True),
                rule="unknown_customer",
                reason=f"the CRM has no customer {customer_id}",
                where=f"ticket {ticket.id}",
            )
            return Outcome(ticket_id=ticket.id, intent="", predicted=intent.label,
                           confidence=intent.confidence,
                           action="quarantined", policy_outcome="quarantined", decided_by=[],
                           reason="unknown customer", reference=reference)  # fmt: skip
        customer: dict[str, Any] = dict(record or {})  # a refused record: in quarantine
        recent = await ctx.read("payments", RECENT, customer=customer_id)
        is_sensitive = intent.label in sensitive
        proposal = ReplyProposal(intent=intent.label, reply=render_reply(intent.label, customer))
        check = await gate.check(
            ctx,
            "reply",
            proposal,
            inputs=intent.policy_inputs(sensitive),
            context={
                "message": ticket.text,
                "ticket_id": ticket.id,
                "customer": {k: customer.get(k) for k in ("name", "email", "tier", "country")},
                "recent_transactions": recent.rows,
                "data": ctx.data,
                "model": intent.model,
            },
            low_risk=not is_sensitive and intent.confidence >= intent.threshold,
        )
        final: ReplyProposal = check.proposal
        reviewers = check.review.reviewers if check.review else []
        refunded = None
        if check.go_ahead and final.intent == REFUND_INTENT:
            refunded = await refund(ctx, ticket, customer_id)
        why = _why(check.decision)
        if check.go_ahead and (refunded is None or refunded.status in ("refunded", "shadow")):
            body = final.reply
            if refunded is not None:
                body = render_refund(refunded)
            elif final.intent != proposal.intent and final.reply == proposal.reply:
                body = render_reply(final.intent, customer)  # intent corrected: answer that
            reply = {"ticket_id": ticket.id, "customer_id": customer_id,
                     "intent": final.intent, "body": body}  # fmt: skip
            reference = await ctx.effect("reply.send", reply, key=f"reply:{ctx.run_id}")
            action: Literal["auto_reply", "reviewed_reply", "human"] = (
                "auto_reply" if check.outcome == "allowed" else "reviewed_reply"
            )
        else:
            reason = str(check.decision.get("reason") or check.outcome)
            if refunded is not None:  # the answer was cleared, the refund was not made
                reason = refunded.reason or refunded.status
                why = _REFUND_REASONS[refunded.status]
            handoff = {"ticket_id": ticket.id, "customer_id": customer_id,
                       "intent": final.intent, "confidence": intent.confidence,
                       "reason": reason}  # fmt: skip
            reference = await ctx.effect("handoff.queue", handoff, key=f"handoff:{ctx.run_id}")
            action = "human"
        return Outcome(
            ticket_id=ticket.id,
            intent=final.intent,
            predicted=intent.label,
            confidence=intent.confidence,
            action=action,
            policy_outcome=check.outcome,
            decided_by=reviewers,
            reason=why,
            reference=reference,
            stale_data=bool(ctx.data["stale"]),
            refund=refunded,
        )


_REFUND_FIELDS = ("refund_id", "transaction_id", "amount_cents", "currency")

_REFUND_REASONS = {
    "denied": "refund denied (policy or reviewer)",
    "refused": "refund refused by the payments service",
    "no_transaction": "refund: no refundable transaction",
}


def _why(decision: dict[str, object]) -> str:
    if decision.get("policy"):
        return str(decision["policy"])
    return "audit sample" if decision.get("sampled") else str(decision.get("outcome"))
