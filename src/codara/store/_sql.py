"""The store's logic, written once for both databases over a small per-driver seam.

:class:`SQLStore` holds every method whose logic is the same on SQLite and PostgreSQL, in
Codara's own SQL (``?`` placeholders, ``store/_base.py``). A backend supplies only what
differs between drivers:

- the connection: :meth:`~SQLStore._read` (a single-statement read), :meth:`~SQLStore._write`
  (a single-statement write, its own transaction; rowcount) and :meth:`~SQLStore._write_rows`
  (the same, returning rows), and :meth:`~SQLStore._write_tx` (a multi-statement write
  transaction, yielding the :class:`Tx` a transactional step's body gets);
- locking and error mapping: :meth:`~SQLStore._journal_key_taken` (an error that means
  another owner wrote the row: fenced) and :meth:`~SQLStore._store_failed` (an error of the
  store rather than of a transaction body);
- the SQL flavour of the few statements that differ: the claim (``FOR UPDATE SKIP LOCKED``
  on PostgreSQL), the fenced journal insert (``FOR SHARE``), row locks on a read, a set of
  values (``IN (?, ?)`` or ``= ANY(?)``) and the wake-up ``NOTIFY`` (none on SQLite);
- ``append``, the hot path, specialised per driver (a SQLite append costs no extra coroutine).

Journal appends and finishes go through the store's group commit (``_group``): written
directly when the run writes alone, else together with the other runs' rows in one commit.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from codara.store import _audit
from codara.store import _base as q
from codara.store._base import FencedError, RowBuilder, Store, Tx, own_sql
from codara.store._group import Finish, GroupCommit, Write
from codara.store._types import RUN_COLUMNS, Claim, JournalRecord, RunRecord

__all__ = ["SQLStore", "WriteParams"]

WriteParams = tuple[Any, ...] | Callable[[float], tuple[Any, ...]]
"""A write's parameters, or a function of the seconds the write waited for the database
(a lease counts from when the write lands)."""

_SELECT_FENCE = "SELECT token, signal_version FROM codara_runs WHERE id = ?"
_RUN_IDS = "SELECT id FROM codara_runs WHERE id > ? ORDER BY id LIMIT ?"


class _BodyFailed(Exception):
    """Carries an error of a transaction body past the backend's error translation."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


class SQLStore(Store):
    """A :class:`Store` over one SQL database; subclasses are the per-driver parts."""

    # -- the SQL flavour ---------------------------------------------------------------------
    APPEND: ClassVar[str]
    """INSERT ... SELECT of a journal row (``journal_params`` then run id and token) that
    writes nothing unless the token still owns the run."""
    CLAIM: ClassVar[str]
    """Claim up to ``limit`` ready runs: CLAIM_SET params, now, the keys, limit; ``{keys}``
    is the :meth:`_members` fragment."""
    CLAIM_ONE: ClassVar[str]
    """Claim one run by id: CLAIM_SET params, run id, now, the keys."""
    LOCK_ROWS: ClassVar[str] = ""
    """Appended to a read inside a write transaction to lock the rows it reads."""
    WAKE: ClassVar[str | None] = None
    """A statement that wakes idle workers when its transaction commits, if the database
    can (PostgreSQL NOTIFY)."""
    GROUP_WINDOW: ClassVar[float] = 0.0
    """Group commit: another run's write this many seconds ago means runs write
    concurrently (SQLite, whose writes never leave the event loop; 0: only a write in
    flight does)."""

    _group: GroupCommit

    def _init_group(self, max_groups: int = 1) -> None:
        self._group = GroupCommit(self._write_group, self._write_one, self.GROUP_WINDOW, max_groups)

    @property
    def group_sizes(self) -> list[int]:
        """How many rows each recent group commit wrote (the last few hundred)."""
        return list(self._group.groups)

    # -- the seam: connection, locking and errors of one driver -----------------------------
    @abc.abstractmethod
    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """A single-statement read of the latest commit."""

    @abc.abstractmethod
    async def _write(self, sql: str, params: WriteParams = ()) -> int:
        """A single-statement write, its own transaction; returns the rowcount."""

    @abc.abstractmethod
    async def _write_rows(self, sql: str, params: WriteParams = ()) -> list[Any]:
        """A single-statement write with RETURNING; returns its rows."""

    @abc.abstractmethod
    def _write_tx(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction: commits when the block ends, rolls back on an error. Yields
        the driver's :class:`Tx` (user SQL); Codara's own statements take ``own_sql`` of it."""

    @abc.abstractmethod
    def _members(self, column: str, values: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        """``column`` is one of ``values``: the SQL condition and its parameters."""

    @abc.abstractmethod
    def _journal_key_taken(self, exc: Exception) -> bool:
        """``exc`` is the journal's primary key violated: another owner wrote this seq."""

    def _store_failed(self, tx: Tx, exc: Exception) -> bool:
        """``exc``, raised inside a write transaction's body, is the store's failure (which
        the backend translates) rather than the body's own error."""
        return False

    # -- runs --------------------------------------------------------------------------------
    async def create_runs(self, rows: Sequence[q.NewRun], now: float) -> list[str]:
        insert = q.INSERT_RUN + " ON CONFLICT (workflow, idempotency_key) DO NOTHING RETURNING id"
        ids: list[str] = []
        async with self._write_tx() as body:
            tx = own_sql(body)
            for run_id, workflow, version, input_json, key, genesis, started_by in rows:
                got = await tx.fetchall(
                    insert,
                    (run_id, workflow, version, f"{workflow}@{version}", input_json, now, key,
                     genesis, now, now, started_by),
                )  # fmt: skip
                if not got:  # the key started a run already
                    assert key is not None
                    found = await tx.fetchall(q.SELECT_RUN_BY_KEY, (workflow, key))
                    if not q.same_input(found[0][1], input_json):
                        raise q.key_conflict(workflow, key, found[0][0])
                    got = found
                ids.append(got[0][0])
            await self._wake(tx)  # delivered on commit: idle workers claim at once
        return ids

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._read(q.SELECT_RUN, (run_id,))
        return q.run_from_row(rows[0]) if rows else None

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunRecord]:
        where, params = q.filters(status, workflow, before)
        sql = f"SELECT {RUN_COLUMNS} FROM codara_runs{where} ORDER BY created_at DESC LIMIT ?"
        return [q.run_from_row(r) for r in await self._read(sql, (*params, limit))]

    async def count_runs(self, *, workflow: str | None = None) -> dict[str, int]:
        where, params = q.filters(None, workflow, None)
        sql = f"SELECT status, COUNT(*) FROM codara_runs{where} GROUP BY status"
        return {s: int(n) for s, n in await self._read(sql, params)}

    async def journal(self, run_id: str) -> list[JournalRecord]:
        return [q.journal_from_row(r) for r in await self._read(q.SELECT_JOURNAL, (run_id,))]

    async def run_ids(self, *, after: str | None, limit: int) -> list[str]:
        return [r[0] for r in await self._read(_RUN_IDS, (after or "", limit))]

    # -- the worker's hot path ---------------------------------------------------------------
    async def claim(
        self,
        owner: str,
        workflow_keys: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        run_id: str | None = None,
    ) -> list[Claim]:
        if not workflow_keys:
            return []
        # A claim that waited for the database keeps the "now" it was asked with: measured
        # from when it was issued, a lease still running then may have lapsed only because
        # its heartbeat waits behind this claim.
        keys, key_params = self._members("workflow_key", workflow_keys)
        if run_id is not None:
            sql = self.CLAIM_ONE.format(keys=keys)
            params: tuple[Any, ...] = (owner, lease_until, now, run_id, now, *key_params)
        else:
            sql = self.CLAIM.format(keys=keys)
            params = (owner, lease_until, now, now, *key_params, limit)
        return [q.claim_from_row(r) for r in await self._write_rows(sql, params)]

    async def finish(
        self,
        run_id: str,
        token: int,
        status: str,
        output: str | None,
        error: str | None,
        record: JournalRecord,
        now: float,
    ) -> None:
        if self._group.direct(run_id):
            await self._finish_now(run_id, token, Finish(status, output, error, now), record)
        else:
            await self._group.submit(
                Write(run_id, token, record, Finish(status, output, error, now))
            )

    async def _finish_now(
        self, run_id: str, token: int, finish: Finish, record: JournalRecord
    ) -> None:
        self._group.inflight += 1
        try:
            async with self._write_tx() as body:
                if not await self._finish_in(own_sql(body), run_id, token, finish, record):
                    raise FencedError(run_id)
        finally:
            self._group.inflight -= 1

    async def _finish_in(
        self, tx: Tx, run_id: str, token: int, f: Finish, record: JournalRecord
    ) -> bool:
        """The run's final status, its result row and its chain head, inside ``tx``; False
        (nothing written) if ``token`` no longer owns the run."""
        n = await tx.execute(
            q.FINISH_RUN, (f.status, f.output, f.error, f.now, f.now, run_id, token)
        )
        if n != 1:
            return False
        await self._append_in(tx, run_id, token, record)
        await _audit.record_finish(tx, record, f.status, f.now)
        return True

    # -- group commit (see _group) -----------------------------------------------------------
    @abc.abstractmethod
    async def _append_now(self, run_id: str, token: int, record: JournalRecord) -> None:
        """The direct append: one fenced row, its own transaction; FencedError if fenced."""

    async def _write_one(self, w: Write) -> None:
        if w.finish is None:
            await self._append_now(w.run_id, w.token, w.record)
        else:
            await self._finish_now(w.run_id, w.token, w.finish, w.record)

    async def _write_group(self, group: Sequence[Write]) -> list[bool]:
        """Every write of ``group`` in one transaction; per write, written (or fenced)."""
        async with self._write_tx() as body:
            tx = own_sql(body)
            return [await self._write_in(tx, w) for w in group]

    async def _write_in(self, tx: Tx, w: Write) -> bool:
        if w.finish is not None:
            return await self._finish_in(tx, w.run_id, w.token, w.finish, w.record)
        params = (*q.journal_params(w.record), w.run_id, w.token)
        return await tx.execute(self.APPEND, params) == 1

    async def suspend(
        self,
        run_id: str,
        token: int,
        status: str,
        ready_at: float | None,
        waiting_for: str | None,
        signal_version: int,
        now: float,
    ) -> int | None:
        n = await self._write(
            q.SUSPEND_RUN, (status, ready_at, waiting_for, now, run_id, token, signal_version)
        )
        if n == 1:
            return None
        rows = await self._read(_SELECT_FENCE, (run_id,))
        if not rows or rows[0][0] != token:
            raise FencedError(run_id)
        return int(rows[0][1])

    async def release(
        self, run_id: str, token: int, ready_at: float, note: str | None, now: float
    ) -> None:
        n = await self._write(q.RELEASE_RUN, (ready_at, note, now, run_id, token))
        if n and ready_at <= now:  # handed back ready now: any idle worker may take it
            self.woke()
            if self.WAKE is not None:
                await self._write(self.WAKE)

    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], lease_until: float, now: float
    ) -> set[str]:
        if not run_ids:
            return set()
        ids, id_params = self._members("id", run_ids)

        def params(waited: float) -> tuple[Any, ...]:  # one that waited extends from landing
            return (lease_until + waited, now + waited, owner, *id_params)

        await self._write(q.HEARTBEAT.format(ids=ids), params)
        return {r[0] for r in await self._read(q.OWNED.format(ids=ids), (owner, *id_params))}

    async def consume_signal(
        self, run_id: str, token: int, name: str, seq: int, build: RowBuilder
    ) -> JournalRecord | None:
        async with self._write_tx() as body:
            tx = own_sql(body)
            found = await tx.fetchall(q.FIND_SIGNAL + self.LOCK_ROWS, (run_id, name))
            if not found:
                return None  # nothing written: the COMMIT is empty
            signal_id, payload = found[0]
            await tx.execute(q.CONSUME_SIGNAL, (seq, signal_id))
            record = build(payload)
            await self._append_in(tx, run_id, token, record)
            return record

    async def transaction(
        self,
        run_id: str,
        token: int,
        body: Callable[[Tx], Awaitable[Any]],
        build: Callable[[Any], JournalRecord],
    ) -> tuple[Any, JournalRecord]:
        failed: Exception | None = None
        try:
            async with self._write_tx() as tx:
                try:
                    result = await body(tx)
                except Exception as exc:
                    if self._store_failed(tx, exc):
                        raise  # the store's failure, not the body's: StoreUnavailableError
                    raise _BodyFailed(exc) from exc
                record = build(result)
                await self._append_in(own_sql(tx), run_id, token, record)
                return result, record
        except _BodyFailed as carrier:
            failed = carrier.error
        assert failed is not None
        raise failed  # the body's own error, unchanged (raised here: no added context)

    async def _append_in(self, tx: Tx, run_id: str, token: int, record: JournalRecord) -> None:
        """Append a journal row inside an open write transaction (``tx`` is own_sql)."""
        try:
            n = await tx.execute(self.APPEND, (*q.journal_params(record), run_id, token))
        except Exception as exc:
            if self._journal_key_taken(exc):  # another owner wrote this seq already
                raise FencedError(run_id) from exc
            raise
        if n != 1:
            raise FencedError(run_id)

    async def _wake(self, tx: Tx) -> None:
        """``tx`` makes a run ready: wake idle workers when it commits (this process's at
        once, :meth:`Store.woke`; other processes' by NOTIFY where the database has it)."""
        tx.wake_on_commit()
        if self.WAKE is not None:
            await tx.execute(self.WAKE)

    # -- operators: retry and fork -----------------------------------------------------------
    async def retry_run(
        self, run_id: str, build: q.HeadBuilder, now: float
    ) -> JournalRecord | None:
        async with self._write_tx() as body:
            tx = own_sql(body)
            if await tx.execute(q.RETRY_RUN, (now, now, run_id)) != 1:  # locks the run row
                return None
            head = await tx.fetchall(q.JOURNAL_HEAD, (run_id,))
            record = build(q.journal_from_row(head[0]) if head else None)
            await tx.execute(q.INSERT_JOURNAL, q.journal_params(record))
            await self._wake(tx)
            return record

    async def fork_run(self, run: q.NewRun, rows: Sequence[JournalRecord], now: float) -> None:
        run_id, workflow, version, input_json, key, genesis, started_by = run
        async with self._write_tx() as body:
            tx = own_sql(body)
            await tx.execute(
                q.INSERT_RUN,
                (run_id, workflow, version, f"{workflow}@{version}", input_json, now, key,
                 genesis, now, now, started_by),
            )  # fmt: skip
            for r in rows:
                await tx.execute(q.INSERT_JOURNAL, q.journal_params(r))
            await self._wake(tx)

    # -- from outside a worker ---------------------------------------------------------------
    async def send_signal(self, run_id: str, name: str, payload: str | None, now: float) -> bool:
        async with self.tx() as tx:
            return await q.signal_run(tx, run_id, name, payload, now)

    async def cancel(self, run_id: str, now: float) -> bool:
        async with self._write_tx() as body:
            tx = own_sql(body)
            if await tx.execute(q.CANCEL_TO_UNDO, (now, now, run_id, run_id)) == 1:
                await self._wake(tx)  # a worker undoes its effects, then ends its chain
                return True
            if await tx.execute(q.CANCEL_RUN, (now, now, run_id)) != 1:
                rows = await tx.fetchall(q.RUN_STATUS, (run_id,))
                return bool(rows) and rows[0][0] == "cancelling"  # cancelled already
            await _audit.record_cancel(tx, run_id, now)  # the chain ends here: audit evidence
            return True
