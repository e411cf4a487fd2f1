"""Stages and the gate: a workflow version is in ``pilot``, ``shadow`` or ``production``, and
moves up only when its metric's check passes (or an admin overrides it, with a reason).

Every promotion, override and rollback is a row of ``codara_promotions`` with who, when,
the check's whole report as evidence and the versions of what was promoted (workflow,
policies, prompts, model, metric definition). A version with no row is in ``pilot``.
The evidence of a stage is what its runs did since the version entered it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from codara.errors import ConflictError, InputError
from codara.metrics._definition import MetricDefinition
from codara.metrics._evaluate import MetricReport, evaluate
from codara.metrics._evidence import live_cases
from codara.store import Store
from codara.store import gate as repo

__all__ = [
    "STAGES",
    "GateRefusedError",
    "Stage",
    "StageState",
    "check",
    "history",
    "promote",
    "record_definition",
    "rollback",
    "stage_of",
]

Stage = Literal["pilot", "shadow", "production"]
STAGES: tuple[Stage, ...] = ("pilot", "shadow", "production")
EXIT_FAIL = 30
EXIT_NOT_ENOUGH = 31


class GateRefusedError(ConflictError):
    """The check did not pass: the promotion is refused (an admin may override it)."""

    code = "gate_refused"
    exit_code = EXIT_FAIL

    def __init__(self, message: str, report: MetricReport, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.report = report

    @staticmethod
    def of(message: str, report: MetricReport, **kw: Any) -> GateRefusedError:
        if report.outcome == "fail":
            return GateRefusedError(message, report, **kw)
        return NotEnoughEvidenceError(message, report, **kw)


class NotEnoughEvidenceError(GateRefusedError):
    """The check could not settle it yet: the promotion waits for more evidence."""

    code = "gate_not_enough_evidence"
    exit_code = EXIT_NOT_ENOUGH


@dataclass(frozen=True)
class StageState:
    stage: Stage
    since: float | None
    """When the version entered the stage (None: pilot, from its first run)."""


def _stage(value: str) -> Stage:
    for stage in STAGES:
        if stage == value:
            return stage
    raise InputError(f"unknown stage {value!r}", hint=f"one of: {', '.join(STAGES)}")


async def stage_of(store: Store, workflow: str, version: str) -> StageState:
    async with store.tx() as tx:
        rows = [p for p in await repo.promotions(tx, workflow) if p.workflow_version == version]
    if not rows:
        return StageState("pilot", None)
    return StageState(_stage(rows[-1].to_stage), rows[-1].at)


async def history(store: Store, workflow: str) -> list[dict[str, Any]]:
    """Every promotion, override and rollback of the workflow, oldest first."""
    async with store.tx() as tx:
        rows = await repo.promotions(tx, workflow)
    return [
        {
            "id": p.id,
            "workflow_version": p.workflow_version,
            "from": p.from_stage,
            "to": p.to_stage,
            "action": p.action,
            "actor": p.actor,
            "reason": p.reason,
            "at": p.at,
            "versions": json.loads(p.versions),
            "evidence": json.loads(p.evidence),
        }
        for p in rows
    ]


async def record_definition(
    store: Store, definition: MetricDefinition, actor: str, now: float
) -> list[dict[str, Any]]:
    """Record the definition if it is new (who, when, the one before); return the history
    of the workflow's definitions, oldest first."""
    text = json.dumps(definition.model_dump(mode="json"), sort_keys=True)
    async with store.tx() as tx:
        await repo.record_definition(tx, definition.workflow, definition.version, text, actor, now)
        rows = await repo.definitions(tx, definition.workflow)
    return [
        {
            "version": r.version,
            "recorded_at": r.recorded_at,
            "recorded_by": r.recorded_by,
            "previous": r.previous,
            "definition": json.loads(r.definition),
        }
        for r in rows
    ]


async def check(
    store: Store,
    definition: MetricDefinition,
    *,
    version: str,
    actor: str,
    now: float,
    cases: Sequence[Mapping[str, Any]] | None = None,
    evidence: str | None = None,
) -> MetricReport:
    """The metric and guardrails of ``version`` in its current stage, with intervals.

    The evidence is the runs of the version since it entered its stage, unless ``cases``
    are given (an evaluation's, for a version in pilot; ``evidence`` says which)."""
    state = await stage_of(store, definition.workflow, version)
    definitions = await record_definition(store, definition, actor, now)
    if cases is None:
        cases = await live_cases(store, definition, version=version, since=state.since)
        evidence = evidence or f"runs of version {version} since it entered {state.stage}"
    current = definitions[-1]
    return evaluate(
        definition,
        cases,
        workflow_version=version,
        stage=state.stage,
        stage_since=state.since,
        evidence=evidence,
        definition_recorded_at=current["recorded_at"],
        definition_recorded_by=current["recorded_by"],
        definition_previous=current["previous"],
        definition_changes=len(definitions) - 1,
    )


async def promote(
    store: Store,
    definition: MetricDefinition,
    *,
    version: str,
    to: str,
    actor: str,
    roles: frozenset[str],
    reason: str | None,
    override: bool,
    versions: Mapping[str, Any],
    now: float,
    cases: Sequence[Mapping[str, Any]] | None = None,
    evidence: str | None = None,
) -> dict[str, Any]:
    """Move ``version`` one stage up to ``to`` when its check passes; an admin may override
    a check that does not pass, with a reason. Recorded with its evidence and versions."""
    target = _stage(to)
    state = await stage_of(store, definition.workflow, version)
    if STAGES.index(target) != STAGES.index(state.stage) + 1:
        raise ConflictError(
            f"{definition.workflow} version {version} is in {state.stage}: it can move up to "
            f"{_next(state.stage)}, not to {target}",
            hint="stages go pilot -> shadow -> production, one at a time",
        )
    report = await check(
        store, definition, version=version, actor=actor, now=now, cases=cases, evidence=evidence
    )
    action = "promote"
    if report.outcome != "pass":
        if not override:
            raise GateRefusedError.of(
                f"{definition.workflow} version {version} stays in {state.stage}: the check "
                f"says {report.outcome} ({report.metric.verdict.reason})",
                report,
                hint="see `codara gate check`; an admin may --override with a --reason",
            )
        if "admin" not in roles:
            raise ConflictError(
                f"{actor} may not override the gate: it needs the admin role",
                hint="ask an admin, or gather the evidence the check asks for",
            )
        if not (reason or "").strip():
            raise InputError("an override needs --reason: it is recorded with the promotion")
        action = "override"
    await _record(store, definition.workflow, version, state.stage, target, action, actor,
                  reason, report.as_dict(), versions, now)  # fmt: skip
    return {"from": state.stage, "to": target, "action": action, "report": report.as_dict()}


async def rollback(
    store: Store,
    workflow: str,
    *,
    version: str,
    actor: str,
    reason: str | None,
    versions: Mapping[str, Any],
    now: float,
) -> dict[str, Any]:
    """Move ``version`` one stage down (production -> shadow -> pilot); recorded."""
    state = await stage_of(store, workflow, version)
    if state.stage == "pilot":
        raise ConflictError(f"{workflow} version {version} is in pilot: nothing to roll back")
    target = STAGES[STAGES.index(state.stage) - 1]
    await _record(store, workflow, version, state.stage, target, "rollback", actor, reason,
                  {}, versions, now)  # fmt: skip
    return {"from": state.stage, "to": target, "action": "rollback"}


def _next(stage: Stage) -> str:
    index = STAGES.index(stage)
    return STAGES[index + 1] if index + 1 < len(STAGES) else "nothing (it is in production)"


async def _record(
    store: Store,
    workflow: str,
    version: str,
    from_stage: str,
    to_stage: str,
    action: str,
    actor: str,
    reason: str | None,
    evidence: dict[str, Any],
    versions: Mapping[str, Any],
    now: float,
) -> None:
    async with store.tx() as tx:
        rows = [p for p in await repo.promotions(tx, workflow) if p.workflow_version == version]
        if (rows[-1].to_stage if rows else "pilot") != from_stage:
            raise ConflictError(
                f"{workflow} version {version} moved meanwhile (now {rows[-1].to_stage})",
                hint="look again: `codara gate history`",
            )
        await repo.add_promotion(
            tx, workflow=workflow, workflow_version=version, from_stage=from_stage,
            to_stage=to_stage, action=action, actor=actor, reason=reason,
            evidence=json.dumps(evidence, default=str), versions=json.dumps(dict(versions)),
            now=now,
        )  # fmt: skip
