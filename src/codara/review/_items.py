"""What a review item is, who may act on it, and how an edit is checked and diffed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from codara.errors import InputError
from codara.store import ReviewRecord

__all__ = ["Principal", "ReviewItem", "ReviewResult", "diff", "validate_edit"]

ADMIN_ROLES = frozenset({"admin"})
OPERATOR_ROLES = frozenset({"admin", "operator"})


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user (or token holder) and their roles."""

    username: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return bool(self.roles & ADMIN_ROLES)

    @property
    def is_operator(self) -> bool:
        return bool(self.roles & OPERATOR_ROLES)

    def may_see(self, role: str) -> bool:
        return self.is_operator or role in self.roles

    def may_decide(self, role: str) -> bool:
        return self.is_admin or role in self.roles


class ReviewResult(BaseModel):
    """What the waiting run receives when a review is decided."""

    outcome: Literal["approved", "edited", "rejected"]
    proposal: Any
    reviewers: list[str]
    reason_code: str | None = None
    comment: str | None = None
    diff: list[dict[str, Any]] = []
    by_deadline: bool = False


class ReviewItem(BaseModel):
    id: str
    run_id: str
    workflow: str
    step: str
    status: str
    role: str
    assignee: str | None
    claim_expires_at: float | None
    priority: int
    due_at: float | None
    follow_up_at: float | None
    on_timeout: str
    escalate_to: str | None
    escalation_level: int
    approvals_required: int
    approvals: list[str] = []
    initiator: str | None
    low_risk: bool
    policy: str | None
    policy_version: str | None
    reason: str | None
    proposal: Any
    proposal_schema: dict[str, Any] | None
    context: dict[str, Any]
    reject_reasons: list[str]
    outcome: str | None
    result: ReviewResult | None
    version: int
    created_at: float
    updated_at: float
    decided_at: float | None
    kind: str = "decision"
    """``decision``: the run waits for it. ``audit``: a sampled automatic answer that already
    went out; the verdict is a label for the metric, and the run does not wait for it."""
    sampling_probability: float | None = None
    """For an audit, the chance the answer had of being picked (its weight is 1 / this)."""

    @classmethod
    def from_record(cls, r: ReviewRecord, approvals: list[str] | None = None) -> ReviewItem:
        return cls(
            id=r.id,
            run_id=r.run_id,
            workflow=r.workflow,
            step=r.step,
            status=r.status,
            role=r.role,
            assignee=r.assignee,
            claim_expires_at=r.claim_expires_at,
            priority=r.priority,
            due_at=r.due_at,
            follow_up_at=r.follow_up_at,
            on_timeout=r.on_timeout,
            escalate_to=r.escalate_to,
            escalation_level=r.escalation_level,
            approvals_required=r.approvals_required,
            approvals=approvals or [],
            initiator=r.initiator,
            low_risk=bool(r.low_risk),
            policy=r.policy,
            policy_version=r.policy_version,
            reason=r.reason,
            proposal=json.loads(r.proposal),
            proposal_schema=json.loads(r.proposal_schema) if r.proposal_schema else None,
            context=json.loads(r.context) if r.context else {},
            reject_reasons=json.loads(r.reject_reasons) if r.reject_reasons else [],
            outcome=r.outcome,
            result=ReviewResult.model_validate_json(r.result) if r.result else None,
            version=r.version,
            created_at=r.created_at,
            updated_at=r.updated_at,
            decided_at=r.decided_at,
            kind=r.kind,
            sampling_probability=r.sampling_probability,
        )

    def shown(self) -> str:
        """A snapshot of exactly what a reviewer sees, kept with their decision."""
        return json.dumps(
            {
                "proposal": self.proposal,
                "context": self.context,
                "reason": self.reason,
                "policy": self.policy,
                "policy_version": self.policy_version,
                "version": self.version,
            },
            sort_keys=True,
            default=str,
        )


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _check(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(map(str, schema["enum"][:10]))
        problems.append(f"{path or 'value'}: {value!r} is not one of {allowed}")
        return
    kinds = schema.get("type")
    if kinds is None and "anyOf" in schema:
        if not any(_ok(value, s) for s in schema["anyOf"]):
            problems.append(f"{path or 'value'}: {value!r} matches none of the allowed types")
        return
    if kinds is not None:
        allowed_types = tuple(
            t for k in ([kinds] if isinstance(kinds, str) else kinds) for t in _JSON_TYPES[k]
        )
        if isinstance(value, bool) and bool not in allowed_types:
            problems.append(f"{path or 'value'}: expected {kinds}, got a boolean")
            return
        if not isinstance(value, allowed_types):
            problems.append(f"{path or 'value'}: expected {kinds}, got {type(value).__name__}")
            return
    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{path}{name}: required")
        if schema.get("additionalProperties") is False:
            for name in value:
                if name not in props:
                    problems.append(f"{path}{name}: not a field of this proposal")
        for name, sub in props.items():
            if name in value:
                _check(value[name], sub, f"{path}{name}.", problems)
    if isinstance(value, str) and "maxLength" in schema and len(value) > schema["maxLength"]:
        problems.append(f"{path or 'value'}: longer than {schema['maxLength']} characters")


def _ok(value: Any, schema: dict[str, Any]) -> bool:
    problems: list[str] = []
    _check(value, schema, "", problems)
    return not problems


def validate_edit(proposal: Any, schema: dict[str, Any] | None) -> None:
    """Check an edited proposal against the JSON Schema of the original's type."""
    if schema is None:
        return
    problems: list[str] = []
    _check(proposal, schema, "", problems)
    if problems:
        raise InputError(
            "the edited proposal is not valid: " + "; ".join(p.rstrip(".") for p in problems),
            hint="keep the fields and types of the original proposal",
        )


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """The changes from ``before`` to ``after``, field by field, as data."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(set(before) | set(after), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in after:
                out.append({"path": where, "op": "remove", "before": before[key]})
            elif key not in before:
                out.append({"path": where, "op": "add", "after": after[key]})
            else:
                out.extend(diff(before[key], after[key], where))
        return out
    if before != after:
        return [{"path": path or "$", "op": "replace", "before": before, "after": after}]
    return []
