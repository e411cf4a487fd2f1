"""Human control: declarative review policies (CEL), the durable review queue, and the gate
a workflow asks before a step touches the operation."""

from __future__ import annotations

from codara.review._gate import GateResult, ReviewGate, install_reviews
from codara.review._items import Principal, ReviewItem, ReviewResult, diff, validate_edit
from codara.review._service import ForbiddenError, Reviews, review_signal
from codara.review.policy import (
    Decision,
    PolicyError,
    PolicyInputError,
    PolicyProblem,
    PolicyRule,
    SamplingRule,
    WorkflowPolicies,
    load_policies,
)

__all__ = [
    "Decision",
    "ForbiddenError",
    "GateResult",
    "PolicyError",
    "PolicyInputError",
    "PolicyProblem",
    "PolicyRule",
    "Principal",
    "ReviewGate",
    "ReviewItem",
    "ReviewResult",
    "Reviews",
    "SamplingRule",
    "WorkflowPolicies",
    "diff",
    "install_reviews",
    "load_policies",
    "review_signal",
    "validate_edit",
]
