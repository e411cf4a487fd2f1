"""SQL for the metric and the gate: the evidence of a workflow's runs, its metric
definitions as recorded, and its promotions between stages. Every function runs in a ``Tx``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from codara.store._base import Tx

__all__ = [
    "DefinitionRecord",
    "EvidenceRun",
    "PromotionRecord",
    "add_promotion",
    "decisions",
    "definitions",
    "evidence_runs",
    "promotions",
    "record_definition",
    "step_reviews",
]

EVIDENCE_STATUSES = ("completed", "failed", "cancelled", "waiting")
"""Runs that reached an end, or wait (for a person): in flight ones decided nothing yet."""


@dataclass(frozen=True, slots=True)
class EvidenceRun:
    id: str
    status: str
    created_at: float
    finished_at: float | None
    error: str | None


@dataclass(frozen=True, slots=True)
class DefinitionRecord:
    workflow: str
    version: str
    definition: str
    recorded_at: float
    recorded_by: str
    previous: str | None


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    id: int
    workflow: str
    workflow_version: str
    from_stage: str
    to_stage: str
    action: str
    """``promote``, ``override`` (past a failed check, by an admin) or ``rollback``."""
    actor: str
    reason: str | None
    evidence: str
    versions: str
    at: float


def _window(workflow: str, version: str, since: float | None) -> tuple[str, list[Any]]:
    sql = "r.workflow = ? AND r.version = ?"
    params: list[Any] = [workflow, version]
    if since is not None:
        sql += " AND r.created_at >= ?"
        params.append(since)
    return sql, params


async def evidence_runs(
    tx: Tx, workflow: str, version: str, since: float | None
) -> list[EvidenceRun]:
    where, params = _window(workflow, version, since)
    marks = ", ".join("?" * len(EVIDENCE_STATUSES))
    rows = await tx.fetchall(
        "SELECT r.id, r.status, r.created_at, r.finished_at, r.error FROM codara_runs r "
        f"WHERE {where} AND r.status IN ({marks}) ORDER BY r.created_at, r.id",
        (*params, *EVIDENCE_STATUSES),
    )
    return [EvidenceRun(*r) for r in rows]


async def decisions(
    tx: Tx, workflow: str, version: str, since: float | None, op_name: str
) -> list[tuple[str, str | None]]:
    """(run id, journaled output) of each run's ``op_name`` operation (``policy:STEP``)."""
    where, params = _window(workflow, version, since)
    rows = await tx.fetchall(
        "SELECT j.run_id, j.output FROM codara_journal j JOIN codara_runs r ON r.id = j.run_id "
        f"WHERE {where} AND j.name = ? AND j.status = 'ok' ORDER BY j.run_id, j.seq",
        (*params, op_name),
    )
    return [(str(r[0]), r[1]) for r in rows]


async def step_reviews(
    tx: Tx, workflow: str, version: str, since: float | None, step: str
) -> list[tuple[Any, ...]]:
    """(run id, kind, status, outcome, proposal, result, sampling probability) of the
    reviews and audits of ``step`` for the runs in the window."""
    where, params = _window(workflow, version, since)
    return await tx.fetchall(
        "SELECT v.run_id, v.kind, v.status, v.outcome, v.proposal, v.result, "
        "v.sampling_probability FROM codara_reviews v JOIN codara_runs r ON r.id = v.run_id "
        f"WHERE {where} AND v.step = ? ORDER BY v.created_at",
        (*params, step),
    )


async def definitions(tx: Tx, workflow: str) -> list[DefinitionRecord]:
    """The workflow's metric definitions as recorded, oldest first."""
    rows = await tx.fetchall(
        "SELECT workflow, version, definition, recorded_at, recorded_by, previous "
        "FROM codara_metric_definitions WHERE workflow = ? ORDER BY recorded_at, version",
        (workflow,),
    )
    return [DefinitionRecord(*r) for r in rows]


async def record_definition(
    tx: Tx, workflow: str, version: str, definition: str, actor: str, now: float
) -> bool:
    """Record ``version`` as the workflow's current definition unless it already is; True
    when it was recorded now."""
    known = await definitions(tx, workflow)
    if known and known[-1].version == version:
        return False
    previous = known[-1].version if known else None
    await tx.execute(
        "INSERT INTO codara_metric_definitions (workflow, version, definition, recorded_at, "
        "recorded_by, previous) VALUES (?, ?, ?, ?, ?, ?)",
        (workflow, version, definition, now, actor, previous),
    )
    return True


async def promotions(tx: Tx, workflow: str) -> list[PromotionRecord]:
    rows = await tx.fetchall(
        "SELECT id, workflow, workflow_version, from_stage, to_stage, action, actor, reason, "
        "evidence, versions, at FROM codara_promotions WHERE workflow = ? ORDER BY id",
        (workflow,),
    )
    return [PromotionRecord(*r) for r in rows]


async def add_promotion(
    tx: Tx,
    *,
    workflow: str,
    workflow_version: str,
    from_stage: str,
    to_stage: str,
    action: str,
    actor: str,
    reason: str | None,
    evidence: str,
    versions: str,
    now: float,
) -> None:
    await tx.execute(
        "INSERT INTO codara_promotions (workflow, workflow_version, from_stage, to_stage, "
        "action, actor, reason, evidence, versions, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (workflow, workflow_version, from_stage, to_stage, action, actor, reason, evidence,
         versions, now),
    )  # fmt: skip
