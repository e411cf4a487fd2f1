"""The review gate: a workflow asks it before a step touches the operation.

``await gate.check(ctx, "reply", proposal, inputs={...})`` evaluates the workflow's policies
(journaled: which policy fired, its version, the values it saw, the outcome). On ``allow`` or
``deny`` it returns at once. On ``ask`` it creates a review item in the same transaction as
its journal row, then waits durably for the decision: the run holds no worker while people
decide, for minutes or days, across restarts. The wake-up signal carries nothing the gate
trusts: it reads the decision from the review's record (``decided`` by the review service).

An ``allow`` that ``[workflows.NAME.sampling]`` picked is audited *after the fact*: the
answer goes out at once and an audit review (``kind = "audit"``, with the sampling rate as
its probability) is created beside it, in a journaled transaction of its own. Nothing waits
for an audit; its verdict is a label for the metric (``docs/metrics.md``), and it stays open
after the run finishes.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

from codara.config import Settings
from codara.engine import App, Context
from codara.errors import ConfigError
from codara.review._items import ReviewResult
from codara.review._notify import notifier_from_settings, notify_created
from codara.review._service import Notify, Reviews, review_signal
from codara.review.policy import WorkflowPolicies, load_policies
from codara.store import ReviewRecord, Tx, own_sql
from codara.store import reviews as repo

__all__ = ["GateResult", "ReviewGate", "install_reviews"]


class GateResult(BaseModel):
    outcome: Literal["allowed", "denied", "approved", "edited", "rejected"]
    proposal: Any
    decision: dict[str, Any]
    review_id: str | None = None
    review: ReviewResult | None = None
    audit_id: str | None = None
    """The audit review created beside an ``allowed`` answer picked by sampling: it judges
    the answer after the fact (a label for the metric); nothing waits for it."""

    @property
    def go_ahead(self) -> bool:
        """True when the step may act: allowed by policy, or approved / edited by people."""
        return self.outcome in ("allowed", "approved", "edited")


class ReviewGate:
    def __init__(
        self, policies: WorkflowPolicies, *, workflow: str, notify: Notify | None = None
    ) -> None:
        self.policies = policies
        self.workflow = workflow
        self.notify = notify

    @classmethod
    def from_settings(cls, settings: Settings, workflow: str) -> ReviewGate:
        """The gate for ``workflow`` from ``[workflows.<name>]`` in codara.toml."""
        section = settings.section("workflows")
        if workflow not in section:
            raise ConfigError(
                f"no [workflows.{workflow}] table with review policies in "
                f"{settings.source_file or 'the configuration'}",
                hint="declare its policy_input and policies; see docs/policies.md",
            )
        return cls(
            load_policies(section, workflow=workflow),
            workflow=workflow,
            notify=notifier_from_settings(settings),
        )

    def _evaluate(self, inputs: dict[str, Any], key: str) -> dict[str, Any]:
        return self.policies.evaluate(inputs, decision_key=key).as_record()

    async def check(
        self,
        ctx: Context,
        step: str,
        proposal: Any,
        *,
        inputs: Mapping[str, Any],
        context: Mapping[str, Any] | None = None,
        low_risk: bool = False,
        priority: int = 0,
    ) -> GateResult:
        """Decide whether ``proposal`` (what step ``step`` is about to do) may go ahead.

        When the policy input declares a ``data`` table and ``inputs`` has none, it is what
        the run's reads met so far (:attr:`Context.data`: ``stale``, ``quarantined``,
        ``reads``), so a policy can ask a person when a decision rests on stale data."""
        shape = self.policies.policy_input.get("data")
        if isinstance(shape, Mapping) and "data" not in inputs:
            facts = ctx.data
            inputs = {**inputs, "data": {k: facts[k] for k in shape if k in facts}}
        decision: dict[str, Any] = await ctx.step(
            f"policy:{step}", self._evaluate, dict(inputs), f"{ctx.run_id}:{step}"
        )
        if decision["outcome"] == "deny":
            return GateResult(outcome="denied", proposal=proposal, decision=decision)
        if decision["outcome"] == "allow":
            audit_id = None
            if decision.get("sampled"):  # the answer goes out now; its audit judges it later
                audit_id = await self._open_review(
                    ctx, step, decision, proposal, context, low_risk, priority, audit=True
                )
            return GateResult(
                outcome="allowed", proposal=proposal, decision=decision, audit_id=audit_id
            )
        review_id = await self._open_review(
            ctx, step, decision, proposal, context, low_risk, priority, audit=False
        )
        while True:
            # The signal only wakes the run; the decision is the review's own record, read in
            # a journaled transaction so that a replay returns what was read the first time.
            # A signal that is not backed by a decided record (forged) is read past: wait again.
            await ctx.wait_for(review_signal(review_id))
            raw = await ctx.transaction(f"decision:{step}", _read_decision, review_id)
            if raw is not None:
                break
        result = ReviewResult.model_validate(raw)
        final = result.proposal
        if isinstance(proposal, BaseModel):
            final = type(proposal).model_validate(result.proposal)
        outcome = "rejected" if result.outcome == "rejected" else result.outcome
        if outcome in ("approved", "edited"):  # a person's decision: a fact for effect policies
            ctx._reviewed[step] = result.proposal
        return GateResult(
            outcome=outcome,
            proposal=final,
            decision=decision,
            review_id=review_id,
            review=result,
        )

    async def _open_review(
        self,
        ctx: Context,
        step: str,
        decision: dict[str, Any],
        proposal: Any,
        context: Mapping[str, Any] | None,
        low_risk: bool,
        priority: int,
        *,
        audit: bool,
    ) -> str:
        """Create the review (or the audit) in a journaled transaction; notify its role."""
        schema = _proposal_schema(type(proposal)) if isinstance(proposal, BaseModel) else None
        created: list[ReviewRecord] = []

        async def create(user_tx: Tx, *args: Any) -> str:
            tx = own_sql(user_tx)  # Codara's own SQL (``?`` placeholders) in this transaction
            review_id = await self._create(tx, *args)
            record = await repo.get_review(tx, review_id)
            if record is not None:
                created.append(record)
            return review_id

        review_id: str = await ctx.transaction(
            f"{'audit' if audit else 'review'}:{step}",
            create,
            ctx.run_id,
            step,
            decision,
            _json(proposal),
            schema,
            dict(context or {}),
            low_risk,
            priority,
            ctx.now(),
            audit,
        )
        if created:  # created just now, not replayed from the journal, and committed
            await notify_created(self.notify, created[0])
        return review_id

    async def _create(
        self,
        tx: Tx,
        run_id: str,
        step: str,
        decision: dict[str, Any],
        proposal_json: Any,
        schema: dict[str, Any] | None,
        context: dict[str, Any],
        low_risk: bool,
        priority: int,
        now: float,
        audit: bool = False,
    ) -> str:
        rows = await tx.fetchall("SELECT started_by FROM codara_runs WHERE id = ?", (run_id,))
        initiator = rows[0][0] if rows else None
        deadline = decision.get("deadline")
        review_id = uuid.uuid4().hex
        full_context = {**context, "policy_inputs": decision.get("inputs_seen", {})}
        await repo.insert_review(
            tx,
            ReviewRecord(
                id=review_id,
                run_id=run_id,
                workflow=self.workflow,
                step=step,
                status="pending",
                role=str(decision["role"]),
                assignee=None,
                claim_expires_at=None,
                priority=int(decision.get("priority") or priority),
                due_at=None if deadline is None else now + float(deadline),
                follow_up_at=None,
                on_timeout=str(decision.get("on_timeout") or ("close" if audit else "deny")),
                escalate_to=decision.get("escalate_to"),
                escalation_seconds=decision.get("escalation_deadline"),
                escalation_level=0,
                approvals_required=max(1, int(decision.get("approvals") or 1)),
                initiator=initiator,
                low_risk=int(low_risk),
                policy=decision.get("policy"),
                policy_version=decision.get("policy_version"),
                reason=decision.get("reason"),
                proposal=json.dumps(proposal_json),
                proposal_schema=json.dumps(schema) if schema is not None else None,
                context=json.dumps(full_context, default=str),
                reject_reasons=json.dumps(list(self.policies.reject_reasons)),
                outcome=None,
                result=None,
                version=0,
                created_at=now,
                updated_at=now,
                decided_at=None,
                kind="audit" if audit else "decision",
                sampling_probability=decision.get("sampling_rate") if audit else None,
            ),
        )
        await repo.add_event(tx, review_id, "system:policy", "create", None, None, now)
        return review_id


async def _read_decision(tx: Tx, review_id: str) -> dict[str, Any] | None:
    """The decided review's result, or None while it is not decided."""
    r = await repo.get_review(own_sql(tx), review_id)  # Codara's own SQL in the step's tx
    if r is None or r.status != "decided" or r.result is None:
        return None
    result: dict[str, Any] = json.loads(r.result)
    return result


@functools.cache
def _proposal_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a proposal type, built once per type: pydantic builds it anew at
    every ``model_json_schema()`` (0.17 ms of CPU for the triage reply), which every review
    item paid on the worker's event loop. Callers share the dict: they encode it, never
    change it."""
    return model.model_json_schema()


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def install_reviews(app: App, *, notify: Notify | None = None) -> None:
    """Have the app's workers apply review deadlines (approve, deny or escalate), and gate
    the effects that ``[effects.NAME]`` gives policies.

    ``notify`` hears of escalations and expiries; by default the webhook that
    ``[notifications]`` configures, if any.
    """
    if notify is None:
        notify = notifier_from_settings(app.settings)
    from codara.review._effect_policy import install_effect_policies

    install_effect_policies(app)  # [effects.NAME]: the effects' own policies

    async def sweep(a: App) -> object:
        return await Reviews(a.store, a.clock, notify=notify).sweep()

    app.add_ticker(sweep)
