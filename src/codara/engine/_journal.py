"""Journal rows written outside a workflow's code: a poisoned run's result, and the operators'
``retry`` and ``fork`` markers.

Rows with ``op < 0`` are not operations of the workflow: -1 is the final ``result`` row, -2
marks a run forked from another run's journal, -3 an operator's retry of a failed run. Every
row joins the run's hash chain like any other (``prev_hash`` = the journal's head, ``hash``
from :func:`codara.trace.row_hash`): the journal is append-only, nothing is ever edited.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable
from dataclasses import replace

from codara.engine._codec import decode, dump_error, dumps
from codara.engine._executor import Outcome
from codara.errors import ConflictError, InputError, PoisonRunError
from codara.store import Claim, FencedError, JournalRecord, RunRecord, Store
from codara.trace import chain_key, genesis_hash, row_hash

__all__ = [
    "FORK_OP",
    "RESULT_OP",
    "RETRY_OP",
    "chained_row",
    "choose_fork_point",
    "fail_poisoned",
    "fork_rows",
    "operator_name",
    "retry_run",
]

log = logging.getLogger("codara.worker")

RESULT_OP = -1
FORK_OP = -2
RETRY_OP = -3


def operator_name(by: str | None) -> str:
    """Who acts: the name given, else the OS user running this process."""
    if by:
        return by
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd)
        return "unknown"


def chained_row(
    head: JournalRecord | None,
    genesis: str,
    run_id: str,
    op: int,
    kind: str,
    name: str,
    status: str,
    input: str | None,
    output: str | None,
    error: str | None,
    at: float,
) -> JournalRecord:
    """The row after ``head`` (the genesis when the journal is empty), hashed into the chain."""
    prev = head.hash if head is not None else genesis
    seq = head.seq + 1 if head is not None else 0
    h = row_hash(
        prev, run_id, seq, op, kind, name, status, input, output, error, at, at, 1, key=chain_key()
    )
    return JournalRecord(
        run_id, seq, op, kind, name, status, input, output, error, at, at, 1, prev, h
    )


async def fail_poisoned(
    store: Store, claim: Claim, clock: Callable[[], float], max_claims: int
) -> Outcome:
    """Fail a run whose last ``max_claims`` claims all lapsed, without executing it again."""
    exc = PoisonRunError(
        f"run {claim.id} was claimed {claim.streak - 1} times in a row and each time its lease "
        "lapsed before it finished, parked or was handed back: it kills or stalls its worker",
        hint=f"see the last operation in `codara runs show {claim.id}`; fix the cause, then "
        f"`codara runs retry {claim.id}` (limit: [worker] max_claims = {max_claims})",
    )
    error = dump_error(exc)
    journal = await store.journal(claim.id)
    genesis = genesis_hash(claim.id, claim.workflow, claim.version, claim.input, key=chain_key())
    now = clock()
    record = chained_row(
        journal[-1] if journal else None, genesis, claim.id,
        RESULT_OP, "result", "failed", "failed", None, None, error, now,
    )  # fmt: skip
    try:
        await store.finish(claim.id, claim.token, "failed", None, error, record, now)
    except FencedError:
        return Outcome("lost")
    log.warning("run %s failed: poison run (%d lapsed claims in a row)", claim.id, claim.streak - 1)
    return Outcome("failed", None, decode(error))


async def retry_run(store: Store, run: RunRecord, by: str, now: float) -> JournalRecord:
    """Queue the failed ``run`` again, journaling who did it; ConflictError if not failed,
    or if its effects were compensated (a retry would replay them from the journal as done,
    and the run complete on effects that were undone)."""
    if run.status == "failed":  # compensations come before the failed result: final here
        undone = sorted({r.name for r in await store.journal(run.id) if r.kind == "compensate"})
        if undone:
            raise ConflictError(
                f"run {run.id} cannot be retried: its effects were compensated after it "
                f"failed ({', '.join(undone)}), and a retry would take them as still done",
                hint="start a new run, or fork it (`codara runs fork RUN --from STEP`) from "
                "before its first effect so the effects are made again",
            )

    def build(head: JournalRecord | None) -> JournalRecord:
        marker = dumps({"by": by, "at": now})
        return chained_row(
            head,
            run.genesis_hash,
            run.id,
            RETRY_OP,
            "retry",
            "retry",
            "ok",
            marker,
            None,
            None,
            now,
        )

    record = await store.retry_run(run.id, build, now)
    if record is None:
        current = await store.get_run(run.id)
        status = current.status if current is not None else "gone"
        raise ConflictError(
            f"run {run.id} is {status}; only a failed run can be retried",
            hint="fork it instead (`codara runs fork RUN --from STEP`) to run it again from a step",
        )
    return record


def _operations(rows: list[JournalRecord]) -> list[JournalRecord]:
    return [r for r in rows if r.op >= 0]


def choose_fork_point(run_id: str, rows: list[JournalRecord], step: str) -> int:
    """The seq of the first row of ``step`` (a step name, first occurrence, or ``seq:N``);
    ConflictError if a fork from there would copy an effect the run compensated."""
    ops = _operations(rows)
    names = list(dict.fromkeys(r.name for r in ops))
    listing = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "") if names else "none"
    if step.startswith("seq:"):
        text = step.removeprefix("seq:")
        seqs = {r.seq: r for r in rows}
        if not text.isdigit() or int(text) not in seqs or seqs[int(text)].op < 0:
            raise InputError(
                f"run {run_id} has no operation at {step!r} (its operations are at seq "
                f"{', '.join(str(r.seq) for r in ops[:30]) or 'none'})",
                hint="give a step name or seq:N of an operation (see `codara runs show`)",
            )
        return _before_undone(run_id, rows, int(text))
    for row in ops:
        if row.name == step:
            return _before_undone(run_id, rows, row.seq)
    raise InputError(
        f"run {run_id} has no step named {step!r}; its steps: {listing}",
        hint="give one of those names (the first occurrence is used) or seq:N",
    )


def _before_undone(run_id: str, rows: list[JournalRecord], from_seq: int) -> int:
    """``from_seq``, unless the fork would copy an effect the run compensated: replayed from
    the copy as done, it would stand in the fork though it was undone (ConflictError)."""
    undone = {(decode(r.input) or {}).get("key") for r in rows if r.kind == "compensate"}
    for row in rows:
        if row.seq >= from_seq:
            break
        if row.kind == "effect" and (decode(row.input) or {}).get("key") in undone:
            first = next(r.seq for r in rows if r.kind == "effect" and r.op == row.op
                         and r.branch == row.branch)  # fmt: skip
            raise ConflictError(
                f"a fork of run {run_id} from seq {from_seq} would replay effect "
                f"{row.name!r} as done, but the run compensated it",
                hint=f"fork from before it (--from seq:{first}) so it is made again",
            )
    return from_seq


def fork_rows(
    rows: list[JournalRecord], from_seq: int, new_id: str, genesis: str, marker: str, now: float
) -> list[JournalRecord]:
    """The source rows before ``from_seq`` (result rows left out), re-chained for ``new_id``
    under its genesis, then the fork marker."""
    out: list[JournalRecord] = []
    prev = genesis
    key = chain_key()
    for row in rows:
        if row.seq >= from_seq:
            break
        if row.kind == "result":
            continue
        seq = len(out)
        h = row_hash(
            prev, new_id, seq, row.op, row.kind, row.name, row.status, row.input, row.output,
            row.error, row.started_at, row.finished_at, row.attempts, row.branch, key=key,
        )  # fmt: skip
        out.append(replace(row, run_id=new_id, seq=seq, prev_hash=prev, hash=h))
        prev = h
    head = out[-1] if out else None
    out.append(
        chained_row(head, genesis, new_id, FORK_OP, "fork", "fork", "ok", marker, None, None, now)
    )
    return out
