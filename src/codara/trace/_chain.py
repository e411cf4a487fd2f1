"""The per-run hash chain that makes the journal tamper-evident.

Each journal row stores the hash of the row before it (``prev_hash``) and its own ``hash``,
a SHA-256 over every column of the row and ``prev_hash``. The first row chains to the run's
``genesis_hash``, a hash of the run's id, workflow, version and input. Editing, deleting,
inserting or reordering rows breaks the chain at that point; a finished run must end with
its ``result`` row, so cutting the tail off is caught too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from codara.store import JournalRecord, RunRecord, Store

__all__ = ["AuditProblem", "AuditReport", "genesis_hash", "row_hash", "verify_chain"]

_SEP = "\x1f"
_NULL = "\x00"


def genesis_hash(run_id: str, workflow: str, version: str, input_json: str) -> str:
    text = _SEP.join(("codara-run-v1", run_id, workflow, version, input_json))
    return hashlib.sha256(text.encode()).hexdigest()


def row_hash(
    prev_hash: str,
    run_id: str,
    seq: int,
    op: int,
    kind: str,
    name: str,
    status: str,
    input: str | None,
    output: str | None,
    error: str | None,
    started_at: float,
    finished_at: float,
    attempts: int,
    branch: str = "",
) -> str:
    # One f-string: this runs once per journal row, on the hot path. The branch is hashed
    # only when it is not the root (""), so rows written before branches existed verify.
    text = (
        f"{prev_hash}\x1f{run_id}\x1f{seq}\x1f{op}\x1f{kind}\x1f{name}\x1f{status}\x1f"
        f"{_NULL if input is None else input}\x1f{_NULL if output is None else output}\x1f"
        f"{_NULL if error is None else error}\x1f{started_at!r}\x1f{finished_at!r}\x1f{attempts}"
    )
    if branch:
        text = f"{text}\x1fbranch={branch}"
    return hashlib.sha256(text.encode()).hexdigest()


def record_hash(r: JournalRecord) -> str:
    return row_hash(
        r.prev_hash,
        r.run_id,
        r.seq,
        r.op,
        r.kind,
        r.name,
        r.status,
        r.input,
        r.output,
        r.error,
        r.started_at,
        r.finished_at,
        r.attempts,
        r.branch,
    )


@dataclass(frozen=True)
class AuditProblem:
    run_id: str
    seq: int | None
    problem: str


@dataclass
class AuditReport:
    runs_checked: int = 0
    rows_checked: int = 0
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_run(run: RunRecord, rows: list[JournalRecord]) -> list[AuditProblem]:
    """Every break in one run's chain, in order."""
    problems: list[AuditProblem] = []
    expected_genesis = genesis_hash(run.id, run.workflow, run.version, run.input)
    if run.genesis_hash != expected_genesis:
        problems.append(AuditProblem(run.id, None, "run input, workflow or version was edited"))
    prev = run.genesis_hash
    expected_seq = 0
    for row in rows:
        if row.seq != expected_seq:
            problems.append(
                AuditProblem(
                    run.id,
                    row.seq,
                    f"expected seq {expected_seq} before seq {row.seq}: "
                    "rows were deleted or inserted",
                )
            )
        expected_seq = row.seq + 1
        if row.prev_hash != prev:
            problems.append(
                AuditProblem(
                    run.id,
                    row.seq,
                    "chain broken: prev_hash does not match the row before "
                    "(rows deleted, inserted or reordered)",
                )
            )
        if record_hash(row) != row.hash:
            problems.append(AuditProblem(run.id, row.seq, "row content was edited"))
        prev = row.hash
    finished = run.status in ("completed", "failed")
    if finished and (not rows or rows[-1].kind != "result"):
        problems.append(
            AuditProblem(
                run.id,
                None,
                f"run is {run.status} but its journal has no final "
                "result row: the tail was deleted",
            )
        )
    return problems


async def verify_chain(store: Store, run_id: str | None = None) -> AuditReport:
    """Check the chain of one run, or of every run in the store."""
    report = AuditReport()
    if run_id is not None:
        ids = [run_id]
    else:
        ids = []
        after: str | None = None
        while True:
            page = await store.run_ids(after=after, limit=1000)
            if not page:
                break
            ids.extend(page)
            after = page[-1]
    for rid in ids:
        run = await store.get_run(rid)
        if run is None:
            report.problems.append(AuditProblem(rid, None, "no such run"))
            continue
        rows = await store.journal(rid)
        report.runs_checked += 1
        report.rows_checked += len(rows)
        report.problems.extend(check_run(run, rows))
    return report
