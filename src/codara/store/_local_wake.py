"""Wake-ups inside one process: a run made ready here wakes this process's idle workers now.

When the API, a :class:`~codara.engine.Client` or a review decision shares a process with a
worker, the store that commits the write (a run started, a signal sent, a review decided, a
failed run retried, a run handed back) calls :func:`notify` with its database's key right
after the COMMIT returns. Every worker of the process on that database is registered here
with the event it waits on (``Store.wakeups()``), so it claims at once: no poll, no round
trip. This works the same on SQLite, which has no notification channel between processes,
and on PostgreSQL, where it saves the trip through the server's ``NOTIFY``.

The registry is process-wide and keyed by the database (:attr:`Store.wake_key`), so two store
objects opened on the same database (an App's and a Client's) wake each other's workers. A
worker's event may belong to another thread's event loop; it is then set through that loop's
``call_soon_threadsafe``. A lost wake-up costs latency, never correctness: workers still poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

__all__ = ["listening", "notify"]

_lock = threading.Lock()
_waiting: dict[str, dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}


def notify(key: str) -> None:
    """Set the event of every worker of this process waiting on database ``key``."""
    with _lock:
        waiters = list(_waiting.get(key, {}).values())
    if not waiters:
        return
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    for loop, event in waiters:
        if loop is here:
            event.set()
        elif not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)


@contextlib.contextmanager
def listening(key: str, event: asyncio.Event) -> Iterator[asyncio.Event]:
    """While open, :func:`notify` of ``key`` sets ``event`` (on the running loop)."""
    loop = asyncio.get_running_loop()
    with _lock:
        _waiting.setdefault(key, {})[id(event)] = (loop, event)
    try:
        yield event
    finally:
        with _lock:
            waiters = _waiting.get(key, {})
            waiters.pop(id(event), None)
            if not waiters:
                _waiting.pop(key, None)


def listeners(key: str) -> int:
    """How many workers of this process wait on ``key`` (for tests)."""
    with _lock:
        return len(_waiting.get(key, {}))
