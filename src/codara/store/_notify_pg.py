"""Wake-ups over PostgreSQL ``LISTEN``/``NOTIFY``: an idle worker hears at once that a run
became ready, instead of finding out at its next poll.

Writers that make a run ready (``create_runs``, ``send_signal``, a review decision's
``_base.signal_run``) execute :data:`WAKE_SQL` (``SELECT pg_notify('codara_wake', '')``) inside
their transaction. PostgreSQL delivers a notification when, and only if, the transaction
commits, so a woken worker always finds the committed row; identical notifications of one
transaction are folded into one, so a batch of 1,000 runs wakes each worker once.

:class:`WakeListener` keeps one dedicated connection per worker process (besides the pool)
that ``LISTEN``s on the channel and sets an :class:`asyncio.Event` for every notification;
the worker waits on that event as well as on its poll timer. The listener never gives up:
when its connection fails (a server restart, ``pg_terminate_backend``, a network cut found by
a periodic ``SELECT 1``) it reconnects with exponential backoff. Notifications sent while it
was not listening are lost, so after every (re)connect it sets the event once and the worker
looks for work. Meanwhile the worker still polls: a missing listener costs latency, never
correctness.

SQLite has no such channel; its store watches ``PRAGMA data_version`` instead
(``_sqlite.SQLiteStore._watch``). Inside one process, both databases also wake workers
without the server (:mod:`codara.store._local_wake`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = ["CHANNEL", "WAKE_SQL", "WakeListener", "wake_sql"]

log = logging.getLogger("codara.store.wake")

CHANNEL = "codara_wake"
WAKE_SQL = f"SELECT pg_notify('{CHANNEL}', '')"


def wake_sql(dialect: str) -> str | None:
    """The statement that wakes idle workers when the surrounding transaction commits, or
    None where there is none (SQLite: workers poll)."""
    return WAKE_SQL if dialect == "postgresql" else None


class WakeListener:
    """Sets :attr:`event` whenever a ``NOTIFY`` arrives on ``channel``; reconnects forever.

    Use as ``async with WakeListener(conninfo) as event:`` (or :meth:`start` / :meth:`stop`).
    The owner clears :attr:`event` *before* it looks for work and then waits on it, so that a
    notification arriving while it looks is not lost.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        channel: str = CHANNEL,
        event: asyncio.Event | None = None,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        health_interval: float = 30.0,
        connect_timeout: int = 5,
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.event = event if event is not None else asyncio.Event()
        self.listening = asyncio.Event()
        """Set while a connection is LISTENing (for tests and health checks)."""
        self.backend_pid: int | None = None
        """The server process of the current LISTEN connection, None between connections."""
        self.connects = 0
        """How many times a connection started LISTENing (1 + the reconnects)."""
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.health_interval = health_interval
        self.connect_timeout = connect_timeout
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> asyncio.Event:
        self.start()
        return self.event

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"LISTEN {self.channel}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves, not just the listener

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        import psycopg
        from psycopg import sql

        conn = await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=self.connect_timeout
        )
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _run(self) -> None:
        import psycopg

        delay = self.min_backoff
        failures = 0
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await self._connect()
                self.backend_pid = conn.info.backend_pid
                self.connects += 1
                if failures:
                    log.info(
                        "LISTEN %s: connected again after %d failure(s)", self.channel, failures
                    )
                failures, delay = 0, self.min_backoff
                self.listening.set()
                self.event.set()  # whatever was notified while nobody listened: look now
                while True:
                    async for _ in conn.notifies(timeout=self.health_interval):
                        self.event.set()
                    # quiet for a while: is the link alive? (TimeoutError is an OSError)
                    await asyncio.wait_for(conn.execute("SELECT 1"), self.connect_timeout)
            except (psycopg.Error, OSError) as exc:
                failures += 1
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                # the first failure in a row is worth a warning; the retries that follow are not
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(
                    level,
                    "LISTEN %s: connection lost or refused (%s); workers poll until it is back; "
                    "retrying in %.1f s",
                    self.channel,
                    reason,
                    delay,
                )
            except Exception:  # a bug must not end the listener: workers would only poll
                failures += 1
                log.exception(
                    "LISTEN %s: unexpected failure; retrying in %.1f s", self.channel, delay
                )
            finally:
                self.listening.clear()
                self.backend_pid = None
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:  # already broken: nothing left to release
                        log.debug("LISTEN %s: closing the broken connection failed", self.channel)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
            delay = min(self.max_backoff, delay * 2)
