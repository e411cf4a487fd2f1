"""``ctx.read``: a governed read of a declared source, one journal row per batch.

Per batch, in this order: the request is checked against the source's scope (once per
read, before anything is read: a refusal is journaled and raised as ScopeError); the
connector reads the next batch from the last journaled cursor; each record is checked
against the source's model (:mod:`codara.sources._quality`); the batch's freshness is
judged against ``max_age``; then ONE transaction writes the quarantined records and the
journal row, whose output holds the accepted records, the cursor to resume after, and
the read's lineage (source, target, parameters, what it touched, counts per rule, data
version, newest timestamp, age, stale). Because both commit together, a record is
quarantined exactly once and a journaled batch is never read again for the same operation:
after a crash the journaled batches replay and the read goes on from the last cursor (a
batch read but not yet durable when the worker died is read again: reads are at least
once, their journal rows exactly once).

What a record refused by the model does depends on the source's ``contract``: ``freeze``
fails the read (SourceError, the records quarantined all the same), the others quarantine
it and go on. A stale batch is refused (StaleDataError) or flagged (``ReadBatch.stale``,
and ``stale`` in its lineage), by the source's ``on_stale``.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from codara.engine._codec import decode, dump_error, dumps
from codara.engine._privacy import UNMASK_INSERT, VAULT_SELECT, Privacy, privacy
from codara.errors import (
    CodaraError,
    ConfigError,
    ScopeError,
    SourceError,
    StaleDataError,
)
from codara.sources._base import JSON, Batch, Plan, Rejected, Source
from codara.sources._quality import sort_records
from codara.sources._registry import Sources, model_of

if TYPE_CHECKING:
    from codara.engine._branch import Branch
    from codara.engine._context import Context
    from codara.privacy import Finding
    from codara.store import JournalRecord, Tx

__all__ = ["ReadBatch", "ReadResult", "quarantine", "read_batches", "read_summary"]

_INSERT_QUARANTINE = (
    "INSERT INTO codara_quarantine (id, at, run_id, workflow, source, op, position, rule, "
    "reason, record, status) VALUES "
    "(:id, :at, :run_id, :workflow, :source, :op, :position, :rule, :reason, :record, 'open')"
)

_ERRORS: dict[str, type[CodaraError]] = {
    "codara.errors.ScopeError": ScopeError,
    "codara.errors.StaleDataError": StaleDataError,
    "codara.errors.SourceError": SourceError,
    "codara.errors.ConfigError": ConfigError,
}


@dataclass(frozen=True, slots=True)
class ReadBatch:
    """One journaled batch of a read: the records accepted, and what the read was."""

    rows: list[dict[str, JSON]]
    quarantined: int
    stale: bool
    lineage: dict[str, JSON]
    cursor: JSON = None


@dataclass(frozen=True, slots=True)
class ReadResult:
    """All the batches of one ``ctx.read``."""

    rows: list[dict[str, JSON]]
    quarantined: int = 0
    stale: bool = False
    lineage: list[dict[str, JSON]] = field(default_factory=list)

    @classmethod
    def of(cls, batches: list[ReadBatch]) -> ReadResult:
        return cls(
            rows=[row for b in batches for row in b.rows],
            quarantined=sum(b.quarantined for b in batches),
            stale=any(b.stale for b in batches),
            lineage=[b.lineage for b in batches],
        )

    def __len__(self) -> int:
        return len(self.rows)

    def one(self) -> dict[str, JSON] | None:
        """The only record, None if there is none; ValueError if there are more."""
        if len(self.rows) > 1:
            raise ValueError(f"expected at most one record, the read gave {len(self.rows)}")
        return self.rows[0] if self.rows else None


def _batch_of(output: Any) -> ReadBatch:
    return ReadBatch(
        rows=output["rows"],
        quarantined=int(output["lineage"]["quarantined"]),
        stale=bool(output["lineage"]["stale"]),
        lineage=output["lineage"],
        cursor=output["cursor"],
    )


def _replayed_error(row: JournalRecord) -> CodaraError:
    err = decode(row.error) or {}
    cls = _ERRORS.get(str(err.get("type")), SourceError)
    message = str(err.get("message", "")).split("\n  hint: ", 1)[0]
    if cls is ScopeError:
        return ScopeError(message, rule=str(err.get("rule", "scope")))
    return cls(message)


async def read_batches(
    ctx: Context,
    sources: Sources | None,
    name: str,
    target: str,
    params: dict[str, Any],
    unmasked: tuple[str, ...] = (),
) -> AsyncIterator[ReadBatch]:
    """The batches of one read, replayed from the journal or read now (see the module)."""
    if unmasked:
        _may_unmask(ctx, sources, name, unmasked)
    source: Source | None = None
    plan: Plan | None = None
    live: AsyncIterator[Batch] | None = None
    cursor: JSON = None
    index = 0
    try:
        while True:
            branch, op, rows = ctx._take_op(f"read {name!r}")
            if rows is not None:
                row = rows[0]
                ctx._check(branch, row, "read", name)
                branch.time = max(branch.time, row.finished_at)
                if row.status != "ok":
                    raise _replayed_error(row)
                batch = _batch_of(decode(row.output))
                if unmasked:
                    batch = await _reveal(ctx, name, batch, unmasked, record=False)
            else:
                if source is None:
                    if sources is None:
                        raise ConfigError(
                            f"ctx.read({name!r}): this app declares no sources",
                            hint=f"add a [sources.{name}] table to codara.toml",
                        )
                    source = sources.get(name)
                ctx._active += 1
                try:
                    if plan is None:
                        plan = await _plan(ctx, branch, op, source, target, params, cursor)
                    if live is None:
                        live = source.batches(plan, cursor).__aiter__()
                    batch, live = await _read_one(ctx, sources, branch, op, source, plan, live,
                                                  cursor, index)  # fmt: skip
                    if unmasked:
                        batch = await _reveal(ctx, name, batch, unmasked, record=True)
                finally:
                    ctx._done_working()
            ctx._saw(batch)
            yield batch
            index += 1
            cursor = batch.cursor
            if cursor is None:
                return
    finally:
        if live is not None and hasattr(live, "aclose"):
            await live.aclose()


def _may_unmask(ctx: Context, sources: Sources | None, name: str, fields: tuple[str, ...]) -> None:
    config = sources.configs.get(name) if sources is not None else None
    allowed = set(config.unmasked.get(ctx.workflow, ())) if config is not None else set()
    refused = sorted(set(fields) - allowed)
    if refused:
        raise ScopeError(
            f"workflow {ctx.workflow!r} may not read {', '.join(refused)} of source {name!r} "
            "unmasked",
            rule="unmask",
            hint=f"allow it in codara.toml: [sources.{name}] unmasked = "
            f"{{ {ctx.workflow} = {sorted(fields)!r} }}",
        )


async def _reveal(
    ctx: Context, name: str, batch: ReadBatch, fields: tuple[str, ...], *, record: bool
) -> ReadBatch:
    """``batch`` with ``fields`` turned back into their originals from the vault, for the
    workflow only (the journal keeps the tokens). A token whose original was erased stays a
    token. ``record``: write who saw what (not on replay: the run saw it already)."""
    from codara.privacy import is_token

    shield = privacy()
    tokens = sorted({str(r[f]) for r in batch.rows for f in fields
                     if isinstance(r.get(f), str) and is_token(r[f])})  # fmt: skip
    if not tokens:
        return batch
    if shield.cipher is None:
        raise ConfigError(
            f"ctx.read({name!r}, unmasked=...) needs the vault: CODARA_VAULT_KEY is not set",
            hint="set CODARA_VAULT_KEY (docs/privacy.md), or read the field masked",
        )
    marks = ", ".join("?" for _ in tokens)
    found = await ctx._store.execute_raw(VAULT_SELECT.format(marks=marks), tokens)
    opened = shield.open_rows(found)
    originals = {token: original for token, (_, original) in opened.items()}
    if record and opened:
        now = ctx._clock()
        for token, (kind, _) in opened.items():
            await ctx._store.execute_raw(
                UNMASK_INSERT,
                [now, f"workflow {ctx.workflow}", token, kind, ctx.run_id,
                 f"ctx.read {name} unmasked {', '.join(fields)}"],
            )  # fmt: skip
    ctx._shown.learn(opened)  # from here on, what the run journals is masked
    rows = [
        {k: originals.get(v, v) if k in fields and isinstance(v, str) else v
         for k, v in r.items()}
        for r in batch.rows
    ]  # fmt: skip
    return ReadBatch(rows, batch.quarantined, batch.stale, batch.lineage, batch.cursor)


async def _journal_error(
    ctx: Context,
    branch: Branch,
    op: int,
    name: str,
    input_json: str,
    exc: BaseException,
    started: float,
    quarantine: list[dict[str, Any]] | None = None,
) -> None:
    error = dump_error(exc)
    if isinstance(exc, ScopeError):
        error = dumps({**decode(error), "rule": exc.rule})

    def build(_: Any) -> JournalRecord:
        return ctx._record(op, "read", name, "error", input_json, None, error, started, 1,
                           branch.path)  # fmt: skip

    await _commit(ctx, quarantine or [], build)


async def _commit(
    ctx: Context,
    quarantine: list[dict[str, Any]],
    build: Any,
    vault: list[tuple[Any, ...]] | None = None,
) -> JournalRecord:
    if not quarantine and not vault:  # the common case: one journal row, group-committed
        return await ctx._append(lambda: build(None))

    async def body(tx: Tx) -> None:
        for q in quarantine:
            await tx.execute(_INSERT_QUARANTINE, q)
        if vault:
            await privacy().keep_in(tx, vault)

    # Context._write: under the journal lock, counters put back if the transaction fails
    _, record = await ctx._write(
        lambda: ctx._store.transaction(ctx.run_id, ctx._token, body, build)
    )
    return record


async def _plan(
    ctx: Context,
    branch: Branch,
    op: int,
    source: Source,
    target: str,
    params: dict[str, Any],
    cursor: JSON,
) -> Plan:
    started = ctx._clock()
    try:
        return source.plan(target, **params)
    except CodaraError as exc:
        input_json = dumps({"target": target, "params": params, "cursor": cursor})
        await _journal_error(ctx, branch, op, source.name, input_json, exc, started)
        raise


async def _read_one(
    ctx: Context,
    sources: Sources | None,
    branch: Branch,
    op: int,
    source: Source,
    plan: Plan,
    live: AsyncIterator[Batch],
    cursor: JSON,
    index: int,
) -> tuple[ReadBatch, AsyncIterator[Batch]]:
    started = ctx._clock()
    input_json = dumps({"target": plan.target, "params": dict(plan.params), "cursor": cursor})
    policy = ctx._retry
    attempt = 1
    while True:
        try:
            batch = await anext(live, None)
            break
        except SourceError as exc:
            if exc.non_retryable or not policy.should_retry(exc, attempt):
                await _journal_error(ctx, branch, op, source.name, input_json, exc, started)
                raise
        except CodaraError as exc:
            await _journal_error(ctx, branch, op, source.name, input_json, exc, started)
            raise
        await asyncio.sleep(policy.delay(attempt))
        attempt += 1
        live = source.batches(plan, cursor).__aiter__()  # a failed iterator is spent
    if batch is None:  # the connector ended without a last batch: an empty one ends the read
        batch = Batch(rows=[], cursor=None)
    config = source.config
    positions = (
        batch.positions if batch.positions and len(batch.positions) == len(batch.rows) else None
    )
    sorted_ = sort_records(batch, model_of(config), config.contract, positions=positions)
    now = ctx._clock()
    age = None if batch.newest is None else max(0.0, now - batch.newest)
    # an empty batch holds no data to be old (a lookup that found nothing is not stale)
    stale = config.max_age is not None and batch.seen > 0 and (age is None or age > config.max_age)
    by_rule = Counter(r.rule for r in sorted_.rejected)
    lineage: dict[str, JSON] = {
        "source": source.name,
        "kind": source.kind,
        "target": plan.target,
        "params": {k: v for k, v in plan.params.items()},
        "touched": list(plan.touched),
        "batch": index,
        "seen": batch.seen,
        "accepted": len(sorted_.rows),
        "quarantined": len(sorted_.rejected),
        "by_rule": dict(sorted(by_rule.items())),
        "version": batch.version,
        "newest": batch.newest,
        "age": age,
        "max_age": config.max_age,
        "stale": stale,
        "model": config.record_model,
        "contract": config.contract,
    }
    # The choke point for reads: records, quarantined records and parameters are masked
    # before the transaction stores them (engine/_privacy.py); originals go to the vault
    shield = privacy()
    found: list[Finding] = []
    rows: list[dict[str, JSON]] = []
    for row in sorted_.rows:
        masked, personal = shield.mask_record(row, config.personal)
        rows.append(masked)
        found.extend(personal)
    lineage["params"], personal = shield.mask(lineage["params"])
    found.extend(personal)
    rejected = [_mask_rejected(shield, config.personal, r, found) for r in sorted_.rejected]
    vault = shield.vault_rows(found, now)
    quarantine = [_quarantine_row(ctx, source.name, op, r, now) for r in rejected]
    if stale and config.on_stale == "refuse":
        shown = "no timestamp" if age is None else f"{age:.0f} s old"
        stale_error = StaleDataError(
            f"source {source.name!r}: the data is stale ({shown}, the limit is "
            f"{config.max_age:g} s)",
            hint='refresh the source, or set on_stale = "flag" to read it and let a policy decide',
        )
        await _journal_error(ctx, branch, op, source.name, input_json, stale_error, started)
        raise stale_error
    if sorted_.rejected and config.contract == "freeze":
        frozen = SourceError(
            f"source {source.name!r}: {len(sorted_.rejected)} record(s) break its frozen "
            f"contract ({', '.join(sorted(by_rule))}); they are in quarantine",
            hint="fix the data or the model, then `codara quarantine list`; or relax the "
            "contract to discard_row",
        )
        frozen.non_retryable = True
        await _journal_error(ctx, branch, op, source.name, input_json, frozen, started, quarantine)
        raise frozen
    output = dumps({"rows": rows, "cursor": batch.cursor, "lineage": lineage})

    def build(_: Any) -> JournalRecord:
        return ctx._record(op, "read", source.name, "ok", input_json, output, None, started,
                           attempt, branch.path)  # fmt: skip

    record = await _commit(ctx, quarantine, build, vault)
    branch.time = max(branch.time, record.finished_at)
    if sources is not None:
        sources.observe_read(ctx.run_id, ctx.workflow, lineage)
    return (
        ReadBatch(rows, len(rejected), stale, lineage, batch.cursor),
        live,
    )


_RULE = re.compile(r"[a-z][a-z0-9_.]{0,99}")


async def quarantine(
    ctx: Context,
    sources: Sources | None,
    name: str,
    record: Any,
    rule: str,
    reason: str,
    where: str,
) -> str:
    """``ctx.quarantine``: one journal row of kind ``quarantine`` and the quarantine row,
    in one transaction (see :meth:`Context.quarantine`)."""
    if not isinstance(rule, str) or not _RULE.fullmatch(rule):
        raise ValueError(
            f"ctx.quarantine: rule {rule!r} must be a short lower-case name "
            "(letters, digits, '_' and '.', e.g. 'duplicate_id')"
        )
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("ctx.quarantine: give the reason, for the person who will fix it")
    branch, op, rows = ctx._take_op(f"quarantine {name!r}")
    if rows is not None:
        row = rows[0]
        ctx._check(branch, row, "quarantine", name)
        branch.time = max(branch.time, row.finished_at)
        ctx._data["quarantined"] += 1
        return str(decode(row.output)["id"])
    config = sources.configs.get(name) if sources is not None else None
    if sources is None or config is None:
        raise ConfigError(
            f"ctx.quarantine({name!r}): no source {name!r} is declared",
            hint=f"quarantine a record under the source it was read from ([sources.{name}])",
        )
    started = ctx._clock()
    try:
        dumps(record)
    except TypeError as exc:
        raise ValueError(f"ctx.quarantine: the record is not JSON ({exc})") from None
    shield = privacy()
    found: list[Finding] = []
    masked = _mask_rejected(shield, config.personal, Rejected(record, reason, rule, where), found)
    now = ctx._clock()
    entry = _quarantine_row(ctx, name, op, masked, now)
    input_json = dumps({"rule": rule, "where": entry["position"]})
    output = dumps({"id": entry["id"], "rule": rule})

    def build(_: Any) -> JournalRecord:
        return ctx._record(op, "quarantine", name, "ok", input_json, output, None, started, 1,
                           branch.path)  # fmt: skip

    written = await _commit(ctx, [entry], build, shield.vault_rows(found, now))
    branch.time = max(branch.time, written.finished_at)
    ctx._data["quarantined"] += 1
    return str(entry["id"])


def _mask_rejected(
    shield: Privacy, personal: Mapping[str, str], r: Rejected, found: list[Finding]
) -> Rejected:
    """``r`` as the quarantine keeps it: a record masked as the source's records are, a line
    that did not parse one ``text`` token when the source declares personal fields (which
    part of it is personal cannot be told; its original is in the vault, for the fix),
    anything else scanned; the reason scanned too. What was masked is appended to
    ``found``."""
    if isinstance(r.raw, dict):
        raw, personal_found = shield.mask_record(r.raw, personal)
    elif isinstance(r.raw, str) and personal:
        raw, personal_found = shield.mask_whole("text", r.raw)
    else:
        raw, personal_found = shield.mask(r.raw)
    reason, in_reason = shield.mask(r.reason)
    found.extend(personal_found + in_reason)
    return Rejected(raw=raw, reason=reason, rule=r.rule, where=r.where)


def _quarantine_row(ctx: Context, source: str, op: int, r: Rejected, now: float) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "at": now,
        "run_id": ctx.run_id,
        "workflow": ctx.workflow,
        "source": source,
        "op": op,
        "position": r.where[:500],
        "rule": r.rule[:200],
        "reason": r.reason,
        "record": dumps(r.raw),
    }


def read_summary(row: JournalRecord) -> str | None:
    """What a ``read`` row read, in one line: the data a run's decisions used."""
    if row.kind != "read" or row.status != "ok" or row.output is None:
        return None
    try:
        lineage = decode(row.output)["lineage"]
    except (ValueError, KeyError, TypeError):
        return None
    touched = ", ".join(lineage.get("touched") or []) or lineage.get("target", "")
    text = (
        f"{lineage.get('accepted', 0)} record(s) from {lineage.get('source')} ({touched}), "
        f"batch {lineage.get('batch', 0)}"
    )
    if lineage.get("quarantined"):
        rules = ", ".join(f"{k} {v}" for k, v in (lineage.get("by_rule") or {}).items())
        text += f"; {lineage['quarantined']} quarantined ({rules})"
    if lineage.get("version"):
        text += f"; version {lineage['version']}"
    if lineage.get("age") is not None:
        text += f"; {_age(float(lineage['age']))} old"
    if lineage.get("stale"):
        text += "; STALE"
    return text


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
