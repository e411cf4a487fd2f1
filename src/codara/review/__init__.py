"""Human control: declarative review policies (CEL), and the review queue built on them."""

from __future__ import annotations

from codara.review._policy import (
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
    "PolicyError",
    "PolicyInputError",
    "PolicyProblem",
    "PolicyRule",
    "SamplingRule",
    "WorkflowPolicies",
    "load_policies",
]
