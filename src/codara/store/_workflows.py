"""SQL for the workflow registry: which workflows (and versions) some process has code for,
with the JSON Schema of their input. Every function runs inside a ``Tx``.

An :class:`~codara.engine.App` upserts its workflows when it opens; a
:class:`~codara.engine.Client`, which has no workflow code, reads them to know which version to
start and how to check an input before it is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from codara.store._base import Tx

__all__ = ["WorkflowRecord", "list_workflows", "upsert_workflows"]


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """One registered ``name@version``.

    ``registered_at`` is when it was first registered and never changes; ``ordinal`` is its
    place among the versions of ``name`` in the registering App (registration order), which
    breaks ties between versions registered at the same moment. ``seen_at`` is the last time
    an App with this code opened. ``input_schema`` and ``compatible_with`` are JSON text.
    """

    name: str
    version: str
    input_schema: str | None
    compatible_with: str
    ordinal: int
    registered_at: float
    seen_at: float


_COLUMNS = ", ".join(f.name for f in fields(WorkflowRecord))
_UPSERT = (
    f"INSERT INTO codara_workflows ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (name, version) DO UPDATE SET input_schema = excluded.input_schema, "
    "compatible_with = excluded.compatible_with, seen_at = excluded.seen_at"
)
# Newest first: the version registered last, then the one an App registered after the others.
_ORDER = " ORDER BY name, registered_at DESC, ordinal DESC"


async def upsert_workflows(tx: Tx, rows: Sequence[WorkflowRecord]) -> None:
    """Insert the rows not registered yet; refresh schema, compatibility and ``seen_at`` of the
    others (``registered_at`` and ``ordinal`` keep their first values)."""
    for r in sorted(rows, key=lambda r: (r.name, r.version)):  # one lock order for every App
        await tx.execute(_UPSERT, [getattr(r, f.name) for f in fields(WorkflowRecord)])


async def list_workflows(tx: Tx, name: str | None = None) -> list[WorkflowRecord]:
    """Registered workflows (of ``name`` only, if given), each name's newest version first."""
    sql = f"SELECT {_COLUMNS} FROM codara_workflows"
    params: tuple[str, ...] = ()
    if name is not None:
        sql += " WHERE name = ?"
        params = (name,)
    rows = await tx.fetchall(sql + _ORDER, params)
    return [WorkflowRecord(*r) for r in rows]
