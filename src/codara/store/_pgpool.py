"""A fixed-size pool of PostgreSQL connections that heals itself after a server restart.

Why not ``psycopg_pool``: handing a connection from one caller to the next is the hot path
of every journal append, and psycopg_pool's hand-over (lock, condition, per-wait timer) cost
about 5x this pool's when 32 runs share 4 connections (measured: see docs/operations.md).
This pool keeps the cheap path (an :class:`asyncio.Queue` of idle connections) and adds what
a restart needs:

- a connection handed back broken, closed or not idle (a failure mid-transaction, a
  cancelled query) is discarded, never reused, and its slot is refilled by a background task
  that reconnects with exponential backoff (0.05 s doubling to 2 s, jittered) until it
  succeeds or the pool closes. The slot is always given back: ``lent + idle + refilling ==
  size`` at every moment;
- taking a connection waits at most ``timeout`` seconds, then raises :class:`PoolTimeout`;
- :meth:`check` tests the idle connections (an empty query each) and replaces the dead ones:
  the store calls it after a first lost connection, since a restart killed them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

__all__ = ["ConnectionPool", "PoolTimeout"]

log = logging.getLogger("codara.store.pool")

Conn = psycopg.AsyncConnection[Any]


class PoolTimeout(psycopg.OperationalError):
    """No connection became free in time (or the pool is closed)."""


class ConnectionPool:
    def __init__(
        self,
        conninfo: str,
        size: int,
        *,
        timeout: float,
        connect_kwargs: dict[str, Any],
        min_backoff: float = 0.05,
        max_backoff: float = 2.0,
    ) -> None:
        self.conninfo = conninfo
        self.size = size
        self.timeout = timeout
        self.connect_kwargs = connect_kwargs
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._idle: asyncio.Queue[Conn] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._checking: asyncio.Task[None] | None = None
        self._closed = False
        self.discarded = 0
        """Connections thrown away since the pool opened (for tests and diagnostics)."""

    async def _connect(self) -> Conn:
        return await psycopg.AsyncConnection.connect(self.conninfo, **self.connect_kwargs)

    async def open(self) -> None:
        """Open all ``size`` connections now; raise the driver's error if one fails."""
        made: list[Conn] = []
        try:
            for _ in range(self.size):
                made.append(await self._connect())
        except BaseException:
            for c in made:
                await c.close()
            raise
        for c in made:
            self._idle.put_nowait(c)

    async def close(self) -> None:
        self._closed = True
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._idle.empty():
            await self._idle.get_nowait().close()

    # -- lending ------------------------------------------------------------------------------
    async def acquire(self, timeout: float | None = None) -> Conn:
        if self._closed:
            raise PoolTimeout("the connection pool is closed")
        try:
            return self._idle.get_nowait()
        except asyncio.QueueEmpty:
            pass
        wait = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                return await self._idle.get()
        except TimeoutError:
            raise PoolTimeout(f"no connection became free within {wait:g} s") from None

    def release(self, conn: Conn) -> None:
        """Take ``conn`` back: reuse it if it is healthy and idle, else replace it."""
        if self._closed:
            self._spawn(conn.close())
        elif conn.closed or conn.broken:
            self._discard(conn)
        elif conn.pgconn.transaction_status != TransactionStatus.IDLE:
            # inside a transaction, or a statement still running (a cancelled caller): its
            # state is unknown, so it is not lent again
            self._discard(conn)
        else:
            self._idle.put_nowait(conn)

    def _discard(self, conn: Conn) -> None:
        self.discarded += 1
        self._spawn(self._close_quietly(conn))
        self._spawn(self._refill())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _close_quietly(conn: Conn) -> None:
        try:
            await conn.close()
        except Exception:  # already broken: nothing left to release
            log.debug("closing a discarded connection failed", exc_info=True)

    async def _refill(self) -> None:
        """Open one connection for a discarded one's slot, retrying with backoff."""
        delay, failures = self.min_backoff, 0
        while not self._closed:
            try:
                conn = await self._connect()
            except (psycopg.Error, OSError) as exc:
                failures += 1
                if failures == 1:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    log.warning("PostgreSQL connection lost; reconnecting (%s)", reason)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                delay = min(self.max_backoff, delay * 2)
                continue
            if self._closed:
                await conn.close()
                return
            if failures:
                log.info("PostgreSQL connection open again after %d attempt(s)", failures + 1)
            self._idle.put_nowait(conn)
            return

    # -- checking -----------------------------------------------------------------------------
    def check_soon(self) -> None:
        """Test the idle connections in the background (one check at a time)."""
        if not self._closed and (self._checking is None or self._checking.done()):
            self._checking = asyncio.get_running_loop().create_task(self.check())
            self._tasks.add(self._checking)
            self._checking.add_done_callback(self._tasks.discard)

    async def check(self) -> None:
        """Send an empty query on every idle connection; replace those that fail."""
        idle: list[Conn] = []
        while not self._idle.empty():
            idle.append(self._idle.get_nowait())
        for conn in idle:
            try:
                async with asyncio.timeout(float(self.connect_kwargs.get("connect_timeout", 5))):
                    await conn.execute("")
            except (psycopg.Error, OSError):
                pass  # release() sees it broken and replaces it
            self.release(conn)
