"""Group commit: journal rows of concurrent runs in one process share one commit.

A durable step costs one commit, and a commit costs a disk flush (SQLite ``fsync``) or a
round trip and a WAL flush (PostgreSQL). When many runs execute in one worker, the rows
that become ready while a commit is in flight are written together in the next one: one
transaction, one flush, for all of them.

:class:`GroupCommit` is the queue of one store. A write (a step's row, or a run's result
row with its status) goes one of two ways:

- **directly**, the way a lone write always went, when nothing is queued, no group is being
  written and no other write is in flight (and, on SQLite, where a write never leaves the
  event loop, when no other run wrote within :attr:`GroupCommit.window` seconds): one run on
  its own waits for nothing;
- **grouped** otherwise: it is queued and its caller awaits a future. A flusher task takes
  everything queued, writes it in one transaction and only then resolves the futures: no
  caller learns its row is written before the commit that holds it has returned, so no step
  result reaches its workflow, and no later effect starts, before its row is durable. Up to
  ``max_groups`` flushers write groups at once (PostgreSQL: one connection each; SQLite,
  with its one connection, has one).

Each row of a group is still fenced on its own: a row whose run this worker no longer owns
is not written and its caller (only that one) gets :class:`~codara.store.FencedError`. A
group that fails for any other reason than the store itself (a row that breaks a
constraint) is rolled back and its rows are written again one at a time, so the failure
lands on the row that caused it. A store failure (connection lost, database locked too
long) fails every row of the group with it: the runs are handed back and resume from their
journals, which hold exactly what was committed.

Order: a run has at most one write queued or in flight (the context writes its rows one at
a time, and finishes only after its last step), so the rows of one run are written in
order; rows of different runs have no order between them. The global chain of heads
(``_audit``) is appended inside the group's transaction, one finish after another.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from codara.errors import StoreError
from codara.store._base import FencedError
from codara.store._types import JournalRecord

__all__ = ["Finish", "GroupCommit", "Write"]

log = logging.getLogger("codara.store")

_SOLO_GROUPS = 4
"""After this many groups in a row of a single row each, writes go directly again."""


@dataclass(frozen=True, slots=True)
class Finish:
    """What finishing a run writes besides its result row."""

    status: str
    output: str | None
    error: str | None
    now: float


@dataclass(slots=True)
class Write:
    """One queued write: a journal row, and with ``finish`` the run's final status."""

    run_id: str
    token: int
    record: JournalRecord
    finish: Finish | None = None
    future: asyncio.Future[None] = field(default_factory=lambda: _loop().create_future())


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


WriteGroup = Callable[[Sequence[Write]], Awaitable[list[bool]]]
"""Writes a group in one transaction; per write, True if written, False if fenced."""
WriteOne = Callable[[Write], Awaitable[None]]
"""Writes one write in a transaction of its own (the direct path); FencedError if fenced."""


class GroupCommit:
    """The group-commit queue of one store (see the module docstring)."""

    __slots__ = (
        "_flushers",
        "_grouping",
        "_last_at",
        "_last_run",
        "_queue",
        "_solo",
        "_write_group",
        "_write_one",
        "groups",
        "inflight",
        "max_groups",
        "window",
    )

    def __init__(
        self, write_group: WriteGroup, write_one: WriteOne, window: float, max_groups: int = 1
    ) -> None:
        self._write_group = write_group
        self._write_one = write_one
        self.window = window
        self.max_groups = max_groups
        """How many groups may be in flight at once (each on a connection of its own)."""
        """SQLite: another run's write this recently means runs are writing concurrently."""
        self._queue: list[Write] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._grouping = False
        self._solo = 0
        self._last_run = ""
        self._last_at = 0.0
        self.inflight = 0
        """Direct writes awaiting the database now (PostgreSQL; SQLite's stay on the loop)."""
        self.groups: list[int] = []
        """The size of each group written (the last 1,000), for tests and benchmarks."""

    def direct(self, run_id: str) -> bool:
        """Whether ``run_id``'s write may go directly: nothing to share a commit with."""
        if self._queue or self._flushers or self.inflight:
            return False
        if self.window:
            now = time.perf_counter()
            if run_id != self._last_run and now - self._last_at < self.window:
                self._grouping = True
            self._last_run, self._last_at = run_id, now
        return not self._grouping

    async def submit(self, write: Write) -> None:
        """Queue ``write`` for the next group; return once it is committed."""
        self._queue.append(write)
        if len(self._flushers) < self.max_groups:
            # in a context of its own: never a branch of the caller's run
            loop = asyncio.get_running_loop()
            self._flushers.add(loop.create_task(self._flush(), context=contextvars.Context()))
        await write.future  # a cancelled caller cancels the future: a queued write is dropped

    async def _flush(self) -> None:
        try:
            while self._queue:
                group = [w for w in self._queue if not w.future.done()]
                self._queue = []
                if group:
                    await self._commit(group)
        finally:  # at once, not in a done callback: a write queued now must start a flusher
            self._flushers.discard(asyncio.current_task())

    async def _commit(self, group: list[Write]) -> None:
        if len(self.groups) >= 1000:
            del self.groups[:500]
        self.groups.append(len(group))
        if len(group) == 1:
            self._solo += 1
            if self._solo >= _SOLO_GROUPS:
                self._grouping = False
                self._solo = 0
        else:
            self._solo = 0
        try:
            written = await self._write_group(group)
        except StoreError as exc:  # the store failed: nothing of the group is known written
            for w in group:
                _fail(w, exc)
            return
        except Exception as exc:  # a row the database refused: find it, one write at a time
            log.info(
                "a group commit of %d rows failed (%r); writing them one by one", len(group), exc
            )
            for w in group:
                try:
                    await self._write_one(w)
                except Exception as exc:
                    _fail(w, exc)
                else:
                    _done(w)
            return
        except BaseException as exc:  # cancelled (the loop is closing): tell every caller
            for w in group:
                _fail(w, exc)
            raise
        for w, ok in zip(group, written, strict=True):
            if ok:
                _done(w)
            else:
                _fail(w, FencedError(w.run_id))


def _done(w: Write) -> None:
    if not w.future.done():
        w.future.set_result(None)


def _fail(w: Write, exc: BaseException) -> None:
    if not w.future.done():
        if isinstance(exc, asyncio.CancelledError):
            w.future.cancel()
        else:
            w.future.set_exception(exc)
