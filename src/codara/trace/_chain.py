"""The hash chains that make the journal and the review decisions tamper-evident.

Each journal row stores the hash of the row before it (``prev_hash``) and its own ``hash``
over every column of the row and ``prev_hash``; the first row chains to the run's genesis
(a hash of its id, workflow, version and input). Review events are chained the same way per
review. Hashes are HMAC-SHA256 keyed with ``CODARA_AUDIT_KEY`` when it is set, plain SHA-256
otherwise (``store/_audit.py`` says how a hash names its scheme). When a run ends, and with
every review event, the chain's length and head are appended to the global, chained
``codara_chain_heads`` sequence; an anchor (the newest heads entry, signed) kept outside the
database pins that sequence.

``verify_chain`` checks every chain, cross-checks each run's status, output and error against
its ``result`` row and its recorded head, checks the heads sequence, and, given an anchor,
that the sequence still holds the anchored entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from codara.store import JournalRecord, RunRecord
from codara.store._audit import UNKEYED, ChainKey, HeadRecord, key_id_of
from codara.store._types import TERMINAL_STATUSES

__all__ = [
    "AuditProblem",
    "AuditReport",
    "Checker",
    "check_run",
    "downgraded",
    "genesis_hash",
    "record_hash",
    "row_hash",
]

_NULL = "\x00"


def _genesis_text(run_id: str, workflow: str, version: str, input_json: str) -> str:
    return "\x1f".join(("codara-run-v1", run_id, workflow, version, input_json))


def genesis_hash(
    run_id: str, workflow: str, version: str, input_json: str, *, key: ChainKey = UNKEYED
) -> str:
    return key.seal(_genesis_text(run_id, workflow, version, input_json))


def _row_text(
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
    branch: str,
) -> str:
    # The branch is hashed only when it is not the root (""), so rows written before
    # branches existed verify.
    text = (
        f"{prev_hash}\x1f{run_id}\x1f{seq}\x1f{op}\x1f{kind}\x1f{name}\x1f{status}\x1f"
        f"{_NULL if input is None else input}\x1f{_NULL if output is None else output}\x1f"
        f"{_NULL if error is None else error}\x1f{started_at!r}\x1f{finished_at!r}\x1f{attempts}"
    )
    return f"{text}\x1fbranch={branch}" if branch else text


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
    key: ChainKey = UNKEYED,
) -> str:
    """The hash of one journal row: one HMAC (or SHA-256) call, on the hot path."""
    return key.seal(
        _row_text(
            prev_hash, run_id, seq, op, kind, name, status, input, output, error,
            started_at, finished_at, attempts, branch,
        )
    )  # fmt: skip


def _record_text(r: JournalRecord) -> str:
    return _row_text(
        r.prev_hash, r.run_id, r.seq, r.op, r.kind, r.name, r.status, r.input, r.output,
        r.error, r.started_at, r.finished_at, r.attempts, r.branch,
    )  # fmt: skip


def record_hash(r: JournalRecord, key: ChainKey = UNKEYED) -> str:
    return key.seal(_record_text(r))


@dataclass(frozen=True)
class AuditProblem:
    run_id: str  # "" for a problem of the heads sequence or the anchor
    seq: int | None  # the journal row, where the problem is one row
    problem: str
    review_id: str | None = None


@dataclass
class AuditReport:
    runs_checked: int = 0
    rows_checked: int = 0
    reviews_checked: int = 0
    events_checked: int = 0
    heads_checked: int = 0
    keyed: bool = False  # whether CODARA_AUDIT_KEY was set for this check
    unkeyed_hashes: int = 0  # plain SHA-256 hashes met while keyed (rows from before the key)
    anchor_checked: bool = False
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Checker:
    """Checks hashes under the scheme each one names, and counts what it saw."""

    def __init__(self, key: ChainKey, report: AuditReport, *, require_key: bool = False) -> None:
        self.key = key
        self.report = report
        self.require_key = require_key  # an unkeyed hash is a problem, not a legacy row

    def valid(self, text: str, stored: str) -> str | None:
        """None if ``stored`` is the hash of ``text``; else why not."""
        kid = key_id_of(stored)
        if kid is None:
            if self.key.keyed:
                self.report.unkeyed_hashes += 1
            if not self.key.matches(text, stored):
                return "edited"
            if self.require_key:
                return "hashed without the key (--require-key): rewritten without the key"
            return None
        if not self.key.keyed:
            return f"keyed with key id {kid}, but CODARA_AUDIT_KEY is not set: cannot check it"
        if kid != self.key.kid:
            return (
                f"keyed with key id {kid}, but CODARA_AUDIT_KEY has id {self.key.kid} "
                "(a different key, or a forged hash)"
            )
        return None if self.key.matches(text, stored) else "edited"

    def geneses(self, text: str) -> set[str]:
        found = set() if self.require_key else {UNKEYED.seal(text)}
        if self.key.keyed:
            found.add(self.key.seal(text))
        return found


def downgraded(stored: str, *links: str) -> bool:
    """An unkeyed hash over a keyed one: keyedness never drops along a link, so a chain
    re-hashed without the key shows where it starts (rows from before the key chain only to
    unkeyed hashes)."""
    return key_id_of(stored) is None and any(key_id_of(h) is not None for h in links)


def check_run(
    run: RunRecord,
    rows: list[JournalRecord],
    heads: Sequence[HeadRecord] = (),
    checker: Checker | None = None,
) -> list[AuditProblem]:
    """Every break in one run's chain, and every disagreement between the run's row, its
    journal and its recorded heads, in order."""
    check = checker or Checker(UNKEYED, AuditReport())
    problems: list[AuditProblem] = []

    def add(seq: int | None, text: str) -> None:
        problems.append(AuditProblem(run.id, seq, text))

    genesis_text = _genesis_text(run.id, run.workflow, run.version, run.input)
    geneses = check.geneses(genesis_text)
    why = check.valid(genesis_text, run.genesis_hash)
    if why is not None:
        add(None, "run input, workflow or version was edited" if why == "edited" else why)
    prev = run.genesis_hash
    expected_seq = 0
    for row in rows:
        if row.seq != expected_seq:
            add(
                row.seq,
                (
                    f"expected seq {expected_seq} before seq {row.seq}: rows "
                    "were deleted or inserted"
                ),
            )
        expected_seq = row.seq + 1
        first = row is rows[0] and row.seq == 0
        if first and row.prev_hash in geneses:
            pass  # chained to the run's genesis (under either scheme: a run from before the key)
        elif first and row.prev_hash == run.genesis_hash:
            pass  # the genesis itself is wrong: reported above
        elif row.prev_hash != prev:
            add(
                row.seq,
                (
                    "chain broken: prev_hash does not match the row before (rows "
                    "deleted, inserted or reordered)"
                ),
            )
        why = check.valid(_record_text(row), row.hash)
        if why is not None:
            add(row.seq, "row content was edited" if why == "edited" else why)
        elif downgraded(row.hash, row.prev_hash):
            add(
                row.seq,
                (
                    "row hashed without the key after keyed rows: rewritten, "
                    "or written by a worker without CODARA_AUDIT_KEY"
                ),
            )
        prev = row.hash
    problems.extend(_check_outcome(run, rows, heads))
    return problems


def _check_outcome(
    run: RunRecord, rows: list[JournalRecord], heads: Sequence[HeadRecord]
) -> list[AuditProblem]:
    """The run's status, output and error against its result row and its recorded heads."""
    out: list[AuditProblem] = []

    def add(seq: int | None, text: str) -> None:
        out.append(AuditProblem(run.id, seq, text))

    # `codara runs retry` reopens a failed run: it appends a `retry` row (op -3) after the
    # failed result. What was recorded before the last such row (its result, its heads
    # entry) is history; the run's present state is checked against what came after.
    last_retry = -1
    for i, r in enumerate(rows):
        if r.kind == "retry" and r.op < 0:
            last_retry = r.seq
            before = rows[i - 1] if i > 0 else None
            if before is None or before.kind != "result" or before.status != "failed":
                add(r.seq, "a retry row that does not follow a failed result row")
    results = [r for r in rows if r.kind == "result" and r.seq > last_retry]
    recorded, heads = heads, [h for h in heads if h.length > last_retry]
    status = run.status
    # a run cancelled after effects happened is ended by the worker that undid them, with a
    # ``cancelled`` result row; one cancelled with nothing to undo has none
    undone = status == "cancelled" and bool(results)
    if status in ("completed", "failed") or undone:
        if not rows or rows[-1].kind != "result":
            add(
                None,
                f"run is {status} but its journal has no final result row: the tail was deleted",
            )
        else:
            result = rows[-1]
            if result.status != status:
                add(
                    result.seq,
                    (
                        f"run is {status} but its result row says {result.status}: "
                        "the run's status was edited"
                    ),
                )
            if run.output != result.output:
                add(
                    result.seq,
                    ("run output differs from its result row: codara_runs.output was edited"),
                )
            if run.error != result.error:
                add(
                    result.seq,
                    ("run error differs from its result row: codara_runs.error was edited"),
                )
    elif results:
        add(
            results[-1].seq,
            (
                f"run is {status} but its journal has a {results[-1].status} "
                "result row: the run's status was edited"
            ),
        )
    if len(results) > 1:
        add(results[0].seq, "the journal has more than one result row")
    if status not in TERMINAL_STATUSES:
        if heads:
            add(
                None,
                (
                    f"run is {status} but the chain heads recorded it as {heads[-1].state} "
                    f"(heads #{heads[-1].seq}): the run's status was edited"
                ),
            )
        return out
    if not heads:
        add(
            None,
            (
                f"run is {status} but its end was never recorded in the chain "
                "heads: its status was edited, or its heads entry deleted"
            ),
        )
        return out
    last = heads[-1]
    if last.state != status:
        add(
            None,
            (
                f"run is {status} but the chain heads recorded it as {last.state} "
                f"(heads #{last.seq}): its status was edited"
            ),
        )
    if last.length != len(rows):
        add(
            None,
            (
                f"the journal has {len(rows)} row(s), but had {last.length} "
                f"when the run ended (heads #{last.seq}): rows were deleted "
                "or added"
            ),
        )
    for entry in recorded:  # every head, superseded ones too, is a prefix of the journal
        if entry.length > len(rows):
            continue  # reported above
        at = rows[entry.length - 1].hash if entry.length else run.genesis_hash
        if at != entry.head:
            add(
                None,
                (
                    f"the journal does not match its head recorded at heads #{entry.seq}: "
                    "the chain was rewritten"
                ),
            )
    return out
