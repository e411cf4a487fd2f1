"""SQL for reading journaled policy decisions back, page by page (``codara policy simulate``).

A review gate journals each decision as the result of a step named ``policy:STEP``. These
queries read them for a workflow's runs created in a window, a page of runs at a time in
``(created_at, id)`` order (keyset paging on ``ix_codara_runs_workflow_created``, never an
OFFSET), with the reviews people decided on those runs. Every function runs inside a ``Tx``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from codara.store._base import Tx

__all__ = [
    "DecidedReview",
    "DecisionRow",
    "RunKey",
    "decided_reviews",
    "decision_rows",
    "gate_steps",
    "known_workflows",
    "run_page",
    "workflow_known",
]

POLICY_PREFIX = "policy:"


@dataclass(frozen=True, slots=True)
class RunKey:
    """Where a page of runs ends: the next page starts after it."""

    created_at: float
    id: str


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One journaled ``policy:STEP`` step: its result is the decision (JSON), when ``ok``."""

    run_id: str
    seq: int
    step: str
    status: str
    output: str | None


@dataclass(frozen=True, slots=True)
class DecidedReview:
    """A decided review: what was proposed, and the result people (or a deadline) gave."""

    run_id: str
    step: str
    outcome: str | None
    proposal: str
    result: str | None


async def workflow_known(tx: Tx, workflow: str) -> bool:
    """True when some App registered ``workflow`` or some run of it exists."""
    rows = await tx.fetchall("SELECT 1 FROM codara_workflows WHERE name = ? LIMIT 1", (workflow,))
    if rows:
        return True
    rows = await tx.fetchall("SELECT 1 FROM codara_runs WHERE workflow = ? LIMIT 1", (workflow,))
    return bool(rows)


async def known_workflows(tx: Tx, limit: int = 30) -> list[str]:
    """Names of registered workflows (for the message about an unknown one)."""
    rows = await tx.fetchall(
        "SELECT DISTINCT name FROM codara_workflows ORDER BY name LIMIT ?", (limit,)
    )
    return [str(r[0]) for r in rows]


async def run_page(
    tx: Tx, workflow: str, since: float, until: float, after: RunKey | None, limit: int
) -> list[RunKey]:
    """The next ``limit`` runs of ``workflow`` created in [``since``, ``until``], after
    ``after`` (None: from the start)."""
    sql = (
        "SELECT created_at, id FROM codara_runs WHERE workflow = ? AND created_at >= ? "
        "AND created_at <= ?"
    )
    params: list[object] = [workflow, since, until]
    if after is not None:
        sql += " AND (created_at > ? OR (created_at = ? AND id > ?))"
        params += [after.created_at, after.created_at, after.id]
    rows = await tx.fetchall(sql + " ORDER BY created_at, id LIMIT ?", (*params, limit))
    return [RunKey(float(r[0]), str(r[1])) for r in rows]


async def decision_rows(
    tx: Tx, run_ids: Sequence[str], step: str | None = None
) -> list[DecisionRow]:
    """The journaled decisions of these runs (of gate step ``step`` only, if given), in
    journal order. Only the last attempt's row of a step exists: failed attempts that were
    retried in the same claim are not journaled, a failed evaluation is (status ``error``)."""
    if not run_ids:
        return []
    marks = ", ".join("?" * len(run_ids))
    sql = (
        "SELECT run_id, seq, name, status, output FROM codara_journal "
        f"WHERE run_id IN ({marks}) AND kind = 'step' AND op >= 0 AND "
    )
    params: list[object] = list(run_ids)
    if step is None:
        sql += "name LIKE ?"
        params.append(POLICY_PREFIX + "%")
    else:
        sql += "name = ?"
        params.append(POLICY_PREFIX + step)
    rows = await tx.fetchall(sql + " ORDER BY run_id, seq", params)
    return [
        DecisionRow(str(r[0]), int(r[1]), str(r[2]).removeprefix(POLICY_PREFIX), str(r[3]), r[4])
        for r in rows
    ]


async def gate_steps(
    tx: Tx, workflow: str, since: float, until: float, limit: int = 30
) -> list[str]:
    """The gate steps that journaled decisions in the window (to name them when a step
    asked for has none: this reads every such run's journal, so only then)."""
    rows = await tx.fetchall(
        "SELECT DISTINCT j.name FROM codara_journal j JOIN codara_runs r ON r.id = j.run_id "
        "WHERE r.workflow = ? AND r.created_at >= ? AND r.created_at <= ? AND j.kind = 'step' "
        "AND j.name LIKE ? ORDER BY j.name LIMIT ?",
        (workflow, since, until, POLICY_PREFIX + "%", limit),
    )
    return [str(r[0]).removeprefix(POLICY_PREFIX) for r in rows]


async def decided_reviews(tx: Tx, run_ids: Sequence[str]) -> list[DecidedReview]:
    """The decided reviews of these runs (uses ``ix_codara_reviews_run``)."""
    if not run_ids:
        return []
    marks = ", ".join("?" * len(run_ids))
    rows = await tx.fetchall(
        "SELECT run_id, step, outcome, proposal, result FROM codara_reviews "
        f"WHERE run_id IN ({marks}) AND status = 'decided' ORDER BY run_id, created_at",
        list(run_ids),
    )
    return [DecidedReview(str(r[0]), str(r[1]), r[2], str(r[3]), r[4]) for r in rows]
