"""What a policy simulation found (:func:`codara.review._whatif.simulate`): counts, the
transitions, the changed and the skipped decisions, and the precision of automatic answers
where people's decisions give labels.

Only counts, run ids, step and policy names and versions go in here: never a reason text
(it quotes input values) and never an input value, unless the caller asked for the inputs of
the changed decisions (``show_inputs``), which are then the masked values as journaled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from codara.metrics import Interval, wilson
from codara.review.policy import WorkflowPolicies

__all__ = ["Change", "Precision", "Simulation", "Tally", "automatic", "kind_of"]

NO_POLICY = "(no policy fired)"


def kind_of(decision: Mapping[str, Any]) -> str:
    """``allow``, ``deny`` or ``ask:ROLE``: what the transition matrix counts."""
    outcome = str(decision.get("outcome"))
    return f"ask:{decision.get('role')}" if outcome == "ask" else outcome


def automatic(decision: Mapping[str, Any]) -> bool:
    """An automatic answer: allowed, or allowed and then picked by sampling for audit."""
    return decision.get("outcome") == "allow" or bool(decision.get("sampled"))


@dataclass
class Tally:
    """Outcomes of one policy set over the decisions taken again."""

    allowed: int = 0
    asked: Counter[str] = field(default_factory=Counter)
    """By role."""
    denied: int = 0
    sampled: int = 0
    """Allowed by the policies, then picked by sampling for an audit (counted among the asked
    where the audit holds the answer, among the allowed where it comes after the fact)."""
    by_policy: Counter[str] = field(default_factory=Counter)
    failed_safe: int = 0
    """Decided by a policy whose condition could not be evaluated (fail-safe ask or deny)."""

    def add(self, decision: Mapping[str, Any]) -> None:
        outcome = decision.get("outcome")
        if outcome == "allow":
            self.allowed += 1
        elif outcome == "deny":
            self.denied += 1
        else:
            self.asked[str(decision.get("role"))] += 1
        # Sampled for audit: an ask held for it, or (audits after the fact) an allow beside it.
        self.sampled += bool(decision.get("sampled"))
        self.by_policy[str(decision.get("policy") or NO_POLICY)] += 1
        self.failed_safe += decision.get("error") is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "asked": dict(sorted(self.asked.items())),
            "asked_total": sum(self.asked.values()),
            "denied": self.denied,
            "sampled_for_audit": self.sampled,
            "failed_safe": self.failed_safe,
            "by_policy": dict(self.by_policy.most_common()),
        }


@dataclass
class Precision:
    """Correct automatic answers among those people labelled, for one policy set."""

    automatic: int = 0
    labelled: int = 0
    correct: int = 0
    from_review: int = 0
    """Labels from people deciding a review a policy asked for (the old policies' ask)."""
    from_audit: int = 0
    """Labels from people auditing a sampled automatic answer."""
    correct_audit: int = 0
    """Of those, correct: a random sample of automatic answers, unlike the reviews a policy
    asked for (docs/metrics.md keeps the two apart)."""

    def add(self, label: bool | None, sampled: bool) -> None:
        self.automatic += 1
        if label is None:
            return
        self.labelled += 1
        self.correct += label
        if sampled:
            self.from_audit += 1
            self.correct_audit += label
        else:
            self.from_review += 1

    def interval(self) -> Interval | None:
        return wilson(self.correct, self.labelled) if self.labelled else None

    def audit_interval(self) -> Interval | None:
        """The same among the audit samples only."""
        return wilson(self.correct_audit, self.from_audit) if self.from_audit else None

    def as_dict(self) -> dict[str, Any]:
        iv, audit = self.interval(), self.audit_interval()
        return {
            "automatic": self.automatic,
            "labelled": self.labelled,
            "correct": self.correct,
            "labels_from_review": self.from_review,
            "labels_from_audit": self.from_audit,
            "precision": None if iv is None else iv.point,
            "wilson_95": None if iv is None else [iv.low, iv.high],
            "audit_precision": None if audit is None else audit.point,
            "audit_wilson_95": None if audit is None else [audit.low, audit.high],
        }


@dataclass(frozen=True)
class Change:
    """A decision the new policies take otherwise."""

    key: str
    old: Mapping[str, Any]
    new: Mapping[str, Any]
    inputs: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "old": kind_of(self.old),
            "new": kind_of(self.new),
            "old_policy": self.old.get("policy"),
            "new_policy": self.new.get("policy"),
        }
        if self.inputs is not None:
            out["inputs_seen"] = dict(self.inputs)
        return out


@dataclass
class Simulation:
    """Everything :func:`simulate` counted, bounded in size whatever the window."""

    workflow: str
    policies_file: str
    since: float
    until: float
    step: str | None
    label_field: str
    first: int
    runs: int = 0
    steps: Counter[str] = field(default_factory=Counter)
    """Journaled decisions read, by gate step."""
    other_steps: list[str] = field(default_factory=list)
    """When ``step`` has no decision in the window: the gate steps that do."""
    old: Tally = field(default_factory=Tally)
    new: Tally = field(default_factory=Tally)
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    changed: int = 0
    changes: list[Change] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    """Decisions that cannot be taken again, by reason."""
    skipped_keys: list[tuple[str, str]] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)
    """Decisions of gate steps the file has no policies for, by reason."""
    labelled: int = 0
    """Decisions people decided (a review or an audit), which therefore carry a label."""
    old_precision: Precision = field(default_factory=Precision)
    new_precision: Precision = field(default_factory=Precision)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def compared(self) -> int:
        return sum(self.transitions.values())

    @property
    def nothing_to_simulate(self) -> bool:
        return self.compared == 0 and not self.skipped

    def note_versions(
        self, workflow: WorkflowPolicies | None, effects: Mapping[str, WorkflowPolicies]
    ) -> None:
        if workflow is not None:
            self.versions[f"workflows.{self.workflow}"] = workflow.version
        for name, policies in sorted(effects.items()):
            self.versions[f"effects.{name}"] = policies.version

    def skip(self, key: str, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.skipped_keys) < self.first:
            self.skipped_keys.append((key, reason))

    def change(self, change: Change) -> None:
        self.changed += 1
        if len(self.changes) < self.first:
            self.changes.append(change)

    def count(self, old: Mapping[str, Any], new: Mapping[str, Any], label: bool | None) -> None:
        self.old.add(old)
        self.new.add(new)
        self.transitions[(kind_of(old), kind_of(new))] += 1
        self.labelled += label is not None
        # A label belongs to the old decision's ask: a person saw that proposal.
        if automatic(old):
            self.old_precision.add(label, sampled=True)
        if automatic(new):
            self.new_precision.add(label, sampled=bool(old.get("sampled")))

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "policies_file": self.policies_file,
            "policy_versions": dict(self.versions),
            "since": self.since,
            "until": self.until,
            "step": self.step,
            "nothing_to_simulate": self.nothing_to_simulate,
            "runs": self.runs,
            "decisions": dict(sorted(self.steps.items())),
            "other_steps": list(self.other_steps),
            "compared": self.compared,
            "old": self.old.as_dict(),
            "new": self.new.as_dict(),
            "transitions": [
                {"old": old, "new": new, "count": n}
                for (old, new), n in sorted(self.transitions.items())
            ],
            "changed": self.changed,
            "changed_first": [c.as_dict() for c in self.changes],
            "not_reevaluated": dict(self.skipped.most_common()),
            "not_reevaluated_first": [{"key": k, "reason": r} for k, r in self.skipped_keys],
            "left_out": dict(self.left_out.most_common()),
            "labels": {
                "field": self.label_field,
                "labelled": self.labelled,
                "note": "labels exist only where people decided a review or an audit",
                "old": self.old_precision.as_dict(),
                "new": self.new_precision.as_dict(),
            },
        }
