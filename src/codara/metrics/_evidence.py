"""Cases from live runs: what each run of a workflow version decided at its gated step, and
what people said of it.

A run's decision is its journaled ``policy:STEP`` operation; its verdict, when there is
one, is the review of that step a person decided: the review the run waited for (an
uncertain case, probability 1) or the audit of an automatic answer picked by sampling
(probability = the sampling rate). Reviewers' decisions become labels: approve = the
proposal was correct, edit = the edited label field is the right answer (correct when it
did not change), reject = wrong. A default applied at a deadline is nobody's verdict.
"""

from __future__ import annotations

import json
from typing import Any

from codara.engine._codec import decode
from codara.metrics._definition import MetricDefinition
from codara.store import Store
from codara.store import gate as repo

__all__ = ["label_of", "live_cases"]


def _field(proposal: Any, name: str | None) -> Any:
    if name is None:
        return proposal
    return proposal.get(name) if isinstance(proposal, dict) else None


def label_of(
    outcome: str | None, proposal: Any, result: dict[str, Any] | None, label_field: str | None
) -> tuple[Any, bool | None]:
    """(label, correct) from a decided review: a person's approve, edit or reject."""
    if result is None or result.get("by_deadline"):
        return None, None  # a deadline's default is nobody's verdict
    predicted = _field(proposal, label_field)
    if outcome == "approved":
        return predicted, True
    if outcome == "edited":
        label = _field(result.get("proposal"), label_field)
        return label, label == predicted
    if outcome == "rejected":
        return None, False
    return None, None


def _gate_outcome(decision: dict[str, Any] | None, review: dict[str, Any] | None) -> str:
    if decision is None:
        return "none"
    if decision.get("outcome") == "allow":
        return "allowed"
    if decision.get("outcome") == "deny":
        return "denied"
    if review is None or review["status"] != "decided":
        return "pending"
    return str(review["outcome"])


async def live_cases(
    store: Store, definition: MetricDefinition, *, version: str, since: float | None = None
) -> list[dict[str, Any]]:
    """One case per run of ``definition.workflow`` at ``version`` started since ``since``
    that has finished or waits for a person."""
    step = definition.step
    async with store.tx() as tx:
        runs = await repo.evidence_runs(tx, definition.workflow, version, since)
        decided = await repo.decisions(tx, definition.workflow, version, since, f"policy:{step}")
        reviews = await repo.step_reviews(tx, definition.workflow, version, since, step)
    decisions: dict[str, dict[str, Any]] = {}
    for run_id, output in decided:
        value = decode(output)
        if isinstance(value, dict):
            decisions.setdefault(run_id, value)  # the first decision of the step
    by_run: dict[str, dict[str, Any]] = {}
    audits: dict[str, dict[str, Any]] = {}
    for run_id, kind, status, outcome, proposal, result, probability in reviews:
        row = {
            "status": status,
            "outcome": outcome,
            "proposal": json.loads(proposal),
            "result": json.loads(result) if result else None,
            "probability": probability,
        }
        (audits if kind == "audit" else by_run).setdefault(run_id, row)
    cases = []
    for run in runs:
        decision = decisions.get(run.id)
        review = by_run.get(run.id)
        audit = audits.get(run.id)
        automated = decision is not None and decision.get("outcome") == "allow"
        judge = audit if automated else review
        label, correct, probability = None, None, 1.0
        predicted = None
        if judge is not None:
            predicted = _field(judge["proposal"], definition.label_field)
            if judge["status"] == "decided":
                label, correct = label_of(
                    judge["outcome"], judge["proposal"], judge["result"], definition.label_field
                )
            if automated and judge["probability"]:
                probability = float(judge["probability"])
        cases.append(
            {
                "key": run.id,
                "at": run.created_at,
                "automated": automated,
                "outcome": _gate_outcome(decision, review),
                "correct": correct,
                "label": label,
                "predicted": predicted,
                "role": None if decision is None else decision.get("role"),
                "sampled": bool(decision and decision.get("sampled")),
                "judged": correct is not None,
                "probability": probability,
                "cost_usd": None,
                "latency_s": None
                if run.finished_at is None
                else max(0.0, run.finished_at - run.created_at),
                "error": _error_type(run.error),
            }
        )
    return cases


def _error_type(error: str | None) -> str | None:
    if not error:
        return None
    value = decode(error)
    if isinstance(value, dict):
        return str(value.get("type") or "Error")
    return "Error"
