"""Human control: declarative review policies (CEL), the durable review queue, and the gate
a workflow asks before a step touches the operation.

The queue (:class:`Reviews`, :class:`ReviewItem`, :class:`Principal`) loads at once; the gate
and the policy language (CEL) load on first use of their names (PEP 562), so that reading or
deciding reviews does not compile a CEL grammar (docs/architecture.md, "Start-up").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from codara.review._items import Principal, ReviewItem, ReviewResult, diff, validate_edit
from codara.review._reveal import PURPOSE_MAX, Revealed, RevealRules
from codara.review._service import ForbiddenError, Reviews, reveal_rules, review_signal

if TYPE_CHECKING:
    from codara.review._gate import GateResult, ReviewGate, install_reviews
    from codara.review._whatif import PolicySet, load_policy_file, parse_since, simulate
    from codara.review._whatif_report import Simulation
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
    "PURPOSE_MAX",
    "Decision",
    "ForbiddenError",
    "GateResult",
    "PolicyError",
    "PolicyInputError",
    "PolicyProblem",
    "PolicyRule",
    "PolicySet",
    "Principal",
    "RevealRules",
    "Revealed",
    "ReviewGate",
    "ReviewItem",
    "ReviewResult",
    "Reviews",
    "SamplingRule",
    "Simulation",
    "WorkflowPolicies",
    "diff",
    "install_reviews",
    "load_policies",
    "load_policy_file",
    "parse_since",
    "reveal_rules",
    "review_signal",
    "simulate",
    "validate_edit",
]

_LAZY = {
    **dict.fromkeys(("GateResult", "ReviewGate", "install_reviews"), "codara.review._gate"),
    **dict.fromkeys(
        ("PolicySet", "load_policy_file", "parse_since", "simulate"), "codara.review._whatif"
    ),
    "Simulation": "codara.review._whatif_report",
    **dict.fromkeys(
        (
            "Decision",
            "PolicyError",
            "PolicyInputError",
            "PolicyProblem",
            "PolicyRule",
            "SamplingRule",
            "WorkflowPolicies",
            "load_policies",
        ),
        "codara.review.policy",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'codara.review' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
