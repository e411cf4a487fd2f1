"""The quarantine: records a read could not accept, kept with their reason until a person
retries or drops them (``codara quarantine``).

``retry`` checks the record again against the source's *current* model (the cause may have
been fixed in the model, or the person gives a corrected record). A record that passes is
``released``: if the source names a workflow in ``release_to``, a run of it starts with the
record as its input, keyed by the quarantine id so that a second retry cannot start a second
run. A record that still fails stays ``open`` with the new reason. ``drop`` closes a record
on purpose. Each change records who made it and when; nothing is deleted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from codara.engine._codec import decode, dumps
from codara.errors import ConflictError, InputError, NotFoundError
from codara.sources._base import Batch
from codara.sources._quality import sort_records
from codara.sources._registry import model_of

if TYPE_CHECKING:
    from codara.engine._app import App
    from codara.engine._client import Client
    from codara.sources import Sources
    from codara.store import Store

__all__ = ["QUARANTINE_STATUSES", "QuarantinedRecord", "Retried", "drop", "get", "list_records",
           "retry"]  # fmt: skip

QUARANTINE_STATUSES = ("open", "released", "dropped")

_COLUMNS = (
    "id, at, run_id, workflow, source, op, position, rule, reason, record, status, "
    "resolved_at, resolved_by"
)


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    id: str
    at: float
    run_id: str
    workflow: str
    source: str
    op: int
    position: str
    rule: str
    reason: str
    record: Any
    status: str
    resolved_at: float | None
    resolved_by: str | None

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(frozen=True, slots=True)
class Retried:
    record: QuarantinedRecord
    released: bool
    run_id: str | None = None
    """The run ``release_to`` started with the record, if any."""


def _of(row: Sequence[Any]) -> QuarantinedRecord:
    values = list(row)
    values[9] = decode(values[9])
    return QuarantinedRecord(*values)


async def list_records(
    store: Store,
    *,
    status: str | None = "open",
    source: str | None = None,
    rule: str | None = None,
    limit: int = 50,
) -> list[QuarantinedRecord]:
    if status is not None and status not in QUARANTINE_STATUSES:
        raise InputError(
            f"unknown quarantine status {status!r}",
            hint=f"use one of: {', '.join(QUARANTINE_STATUSES)}",
        )
    where, args = [], []
    for column, value in (("status", status), ("source", source), ("rule", rule)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    sql = f"SELECT {_COLUMNS} FROM codara_quarantine"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY at DESC, id LIMIT ?"
    rows = await store.execute_raw(sql, [*args, limit])
    return [_of(r) for r in rows]


async def get(store: Store, record_id: str) -> QuarantinedRecord:
    rows = await store.execute_raw(
        f"SELECT {_COLUMNS} FROM codara_quarantine WHERE id = ?", [record_id]
    )
    if not rows:
        raise NotFoundError(
            f"no quarantined record {record_id!r}", hint="see `codara quarantine list`"
        )
    return _of(rows[0])


async def _close(store: Store, record: QuarantinedRecord, status: str, by: str) -> None:
    changed = await store.execute_raw(
        "UPDATE codara_quarantine SET status = ?, resolved_at = ?, resolved_by = ? "
        "WHERE id = ? AND status = 'open' RETURNING id",
        [status, time.time(), by, record.id],
    )
    if not changed:
        raise ConflictError(
            f"quarantined record {record.id} is no longer open (someone else closed it)",
            hint="see `codara quarantine show ID`",
        )


async def _get_open(store: Store, record_id: str) -> QuarantinedRecord:
    record = await get(store, record_id)
    if record.status != "open":
        raise ConflictError(
            f"quarantined record {record_id} is {record.status}, not open",
            hint="only open records can be dropped or retried",
        )
    return record


async def drop(store: Store, record_id: str, *, by: str) -> QuarantinedRecord:
    """Close an open record on purpose; it stays listed as ``dropped``, with who did it."""
    record = await _get_open(store, record_id)
    await _close(store, record, "dropped", by)
    return await get(store, record_id)


async def retry(
    client: Client | App,
    sources: Sources,
    record_id: str,
    *,
    by: str,
    corrected: Any = None,
) -> Retried:
    """Check the record (or ``corrected``, a fixed copy) against the source's model now."""
    store = client.store
    record = await _get_open(store, record_id)
    if record.source not in sources:
        raise NotFoundError(
            f"the source {record.source!r} of record {record_id} is no longer declared",
            hint=f"declare [sources.{record.source}] again, or drop the record",
        )
    config = sources.configs[record.source]
    candidate = record.record if corrected is None else corrected
    if not isinstance(candidate, dict):
        sorted_ = None
        reason, rule = "the record is not an object", "not_object"
    else:
        sorted_ = sort_records(Batch(rows=[candidate]), model_of(config), config.contract)
        reason = sorted_.rejected[0].reason if sorted_.rejected else ""
        rule = sorted_.rejected[0].rule if sorted_.rejected else ""
    if sorted_ is None or sorted_.rejected:
        await store.execute_raw(
            "UPDATE codara_quarantine SET reason = ?, rule = ?, record = ? "
            "WHERE id = ? AND status = 'open'",
            [f"still refused on retry by {by}: {reason}", rule, dumps(candidate), record_id],
        )
        return Retried(await get(store, record_id), released=False)
    valid = sorted_.rows[0]
    run_id = None
    if config.release_to is not None:
        run_id = await client.start_run(
            config.release_to, valid, key=f"quarantine:{record_id}", started_by=by
        )
    await _close(store, record, "released", by)
    return Retried(await get(store, record_id), released=True, run_id=run_id)
