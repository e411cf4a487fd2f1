"""What every source connector gives the engine, whatever it reads.

A connector does two things and nothing else:

1. :meth:`Source.plan` checks a request against the source's declared scope *before*
   anything is read, and returns a :class:`Plan`: what will be read (the query, the
   endpoint, the paths), with which parameters, touching which tables and columns (or
   endpoints, or files). A request outside the scope raises :class:`~codara.errors.ScopeError`
   with the reason; nothing is sent to the source.
2. :meth:`Source.batches` reads a plan in :class:`Batch` es of at most ``batch_rows``
   records. Each batch carries the records it accepted, the ones it could not
   (:class:`Rejected`: a ragged CSV row, bytes that are not the declared encoding, a JSON
   line that does not parse; each with a reason, never dropped), and a ``cursor`` from
   which the next batch starts. ``batches(plan, cursor)`` resumes there: the engine
   journals each batch with its cursor, so after a crash a read goes on from the last
   journaled batch and no batch is read twice for the same operation.

Everything in a batch is JSON (:data:`JSON`): connectors convert their values (a
``datetime`` to ISO 8601, a ``Decimal`` to a string, bytes to base64) with
:func:`json_value`, so that a batch can be journaled and replayed as it was read.

What the engine does with a batch is the same for every kind and is not the connector's
business: quality rules and contract modes, masking of personal data, freshness against
the source's limit, quarantine, lineage. A connector reports the facts those need
(``version``, ``newest``) and raises :class:`~codara.errors.SourceError` when the source
itself fails (unreachable, timed out, a reply that is not what was asked for).
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["JSON", "Batch", "Plan", "Rejected", "Source", "SourceConfig", "json_value"]

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None


class SourceConfig(BaseModel):
    """What every source declares in ``codara.toml`` (``[sources.NAME]``); each kind adds
    its own fields (a URL, a base URL, paths) in a subclass."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    """Which connector reads it: ``sql``, ``http`` or ``file``, or ``"package.module:Class"``
    for a connector of your own (a :class:`Source` subclass with its ``config_model``)."""
    batch_rows: int = Field(default=1000, ge=1, le=1_000_000)
    """The most records one batch (one journal row) holds."""
    max_age: float | None = Field(default=None, gt=0)
    """Freshness limit in seconds: data whose newest timestamp is older is stale."""
    on_stale: Literal["refuse", "flag"] = "flag"
    """A stale read is refused (``StaleDataError``) or read and flagged (``data.stale``)."""
    record_model: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")
    """``"package.module:Model"``: the pydantic model each record must satisfy (its fields,
    types and validators are the quality rules). None: records are taken as read."""
    contract: Literal["freeze", "discard_row", "evolve"] = "discard_row"
    """What a record the model refuses does to the read, in the style of dlt's schema
    contracts. ``freeze``: the read fails (and the records are quarantined); ``discard_row``:
    the record is quarantined and the read goes on; ``evolve``: like ``discard_row``, but
    fields the model does not know are kept instead of refusing the record."""
    personal: dict[str, str] = Field(default_factory=dict)
    """The record's personal fields, as ``path = kind`` (``email = "email"``,
    ``"holder.name" = "name"``; kinds: email, phone, iban, card, name, address, text): each
    is replaced by its token whole before anything stores or shows the record. Every other
    string is scanned for emails, IBANs, card and phone numbers all the same."""
    unmasked: dict[str, list[str]] = Field(default_factory=dict)
    """Which workflows may read which personal fields unmasked (``triage = ["iban"]``):
    ``ctx.read(..., unmasked=["iban"])`` then gives the originals from the vault (the journal
    still holds tokens), and every such read is recorded with the run that made it."""
    release_to: str | None = None
    """A workflow that a quarantined record released by ``codara quarantine retry`` is
    started with (the record as its input, once per record). None: a released record is
    only marked so (for sources read in bulk, the next read picks the fixed data up)."""

    @field_validator("personal")
    @classmethod
    def _kinds(cls, value: dict[str, str]) -> dict[str, str]:
        for path, kind in value.items():
            if kind not in _PERSONAL_KINDS:
                raise ValueError(
                    f"personal field {path!r}: kind {kind!r} is not one of "
                    + ", ".join(_PERSONAL_KINDS)
                )
        return value


_PERSONAL_KINDS = ("email", "phone", "iban", "card", "name", "address", "text")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record a connector could not accept. It goes to quarantine, never away."""

    raw: JSON
    """The record as far as it could be read: a dict of fields, or the text of the line
    (with undecodable bytes replaced) when it could not be parsed at all."""
    reason: str
    """For a person: ``"line 17 has 5 fields, the header has 4"``."""
    rule: str
    """For code and for grouping: ``ragged_row``, ``encoding``, ``json``, ``not_object``..."""
    where: str
    """Where in the source: ``"inbox.csv:17"``, ``"page 3, item 4"``, ``"row 12"``."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A request the source accepted: exactly what it will read."""

    source: str
    """The source's name in ``codara.toml``."""
    target: str
    """The query, the endpoint path or the path pattern, as it will run (no secrets)."""
    params: Mapping[str, JSON] = field(default_factory=dict)
    """The bound parameters (values are never spliced into ``target``)."""
    touched: tuple[str, ...] = ()
    """What it reads: ``customers.email``, ``GET /v1/orders``, ``inbox/2026-12.csv``."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Up to ``batch_rows`` records of a read, and where the next batch starts."""

    rows: list[dict[str, JSON]]
    rejected: list[Rejected] = field(default_factory=list)
    cursor: JSON = None
    """``batches(plan, cursor)`` resumes after this batch; None when it was the last."""
    version: str | None = None
    """The data's version as the source tells it: an ETag, a file's size and modification
    time, a database's change counter. None when the source has none."""
    newest: float | None = None
    """The newest timestamp of the data read (epoch seconds), from the source's declared
    timestamp column, a Last-Modified header or a file's modification time; None when the
    source declares none."""

    positions: list[str] | None = None
    """Where each of ``rows`` is in the source (``"inbox.csv:17"``), when the connector
    knows: a record the source's model refuses is quarantined with it."""

    @property
    def seen(self) -> int:
        """Records read in this batch: accepted plus rejected."""
        return len(self.rows) + len(self.rejected)


class Source(ABC):
    """One configured source. Connectors subclass it, one module per kind."""

    kind: ClassVar[str]
    config_model: ClassVar[type[SourceConfig]] = SourceConfig
    """The model its ``[sources.NAME]`` table is validated with (a subclass per kind)."""

    def __init__(self, name: str, config: SourceConfig) -> None:
        self.name = name
        self.config = config

    @abstractmethod
    def plan(self, target: str, /, **params: Any) -> Plan:
        """Check ``target`` (a query, an endpoint, a path) with ``params`` against the
        scope; raise ScopeError (or InputError for a malformed request) before any read."""

    @abstractmethod
    def batches(self, plan: Plan, cursor: JSON = None) -> AsyncIterator[Batch]:
        """Read ``plan`` from ``cursor`` (None: from the start), batch by batch."""

    async def check(self) -> None:  # noqa: B027 - a source with nothing to reach
        """Reach the source once (connect, authenticate, list the root) so that a wrong
        URL or an unreachable server stops at load with a clear error, not at the first
        read. Raises ConfigError or SourceError."""

    async def close(self) -> None:  # noqa: B027 - most connectors hold nothing to release
        """Release connections and clients."""


def json_value(value: Any) -> JSON:
    """``value`` as JSON the journal can hold and a replay gives back the same.

    Dates and times become ISO 8601 strings, decimals strings (no float rounding), bytes
    base64, UUIDs strings; NaN and infinities None (JSON has no such numbers). Anything
    else unknown becomes its ``str``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v) for v in value]
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)
