"""The worker loop: claim ready runs, execute them concurrently, keep their leases alive.

A worker survives its store: a claim, heartbeat, hand-back or housekeeping tick that fails
(``StoreUnavailableError`` or any other store error) is logged in one line and tried again
after an exponential backoff with jitter (capped at :data:`MAX_BACKOFF` seconds); the store
reconnects by itself on the next try. Stopping (``stop`` set, SIGTERM in ``codara worker``)
is graceful: no more claims, in-flight steps finish within ``shutdown_grace`` seconds and the
runs are handed back at their next operation; what is still running then is cancelled and
handed back too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from codara.engine._context import Context
from codara.engine._executor import HANDBACK_DELAY, Workflow, execute
from codara.engine._journal import fail_poisoned
from codara.engine._retry import RetryPolicy
from codara.errors import StoreError
from codara.store import Claim, Store

if TYPE_CHECKING:
    from codara.engine._effects import Effects
    from codara.mcp import McpServers
    from codara.sources import Sources

__all__ = ["MAX_BACKOFF", "Backoff", "Leases", "Poll", "Worker"]

log = logging.getLogger("codara.worker")

MAX_BACKOFF = 5.0
HAND_BACK_TIMEOUT = 5.0  # on shutdown, the most a dead store may delay the exit


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Backoff:
    """Exponential delays with jitter: ``initial`` doubling up to ``cap`` seconds."""

    def __init__(self, initial: float = 0.1, cap: float = MAX_BACKOFF) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2**self.failures)
        self.failures += 1
        return float(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.failures = 0


class Poll:
    """How long an idle worker waits before it looks for work again, when nothing wakes it.

    ``shortest`` right after activity (a run claimed, a run of this worker ended or parked, a
    wake-up), doubling with every look that found nothing, up to ``longest``. Wake-ups
    bring most work at once; the poll finds what none announces (a timer due, a wake-up
    lost while the PostgreSQL listener or the SQLite watch was down) within milliseconds
    while there is activity, and an idle worker looks only every ``longest``.
    """

    def __init__(self, shortest: float, longest: float) -> None:
        self.shortest = min(shortest, longest)
        self.longest = longest
        self.delay = self.shortest

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.longest, delay * 2)
        return delay

    def active(self) -> None:
        self.delay = self.shortest


class Leases:
    """Keeps the leases of the runs one owner executes alive: the heartbeat.

    Every ``lease/3`` seconds one statement renews every lease the owner holds; a run whose
    lease was lost (another worker took it over, or it was cancelled) is cancelled here, and
    its id lands in :attr:`lost`. A failed renewal is logged in one line and retried sooner,
    with backoff. Used by :class:`Worker` and by ``App.resume`` (inline runs) alike.
    """

    def __init__(
        self, store: Store, owner: str, lease_seconds: float, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease_seconds
        self.clock = clock
        self.tasks: dict[str, asyncio.Future[Any]] = {}
        self.lost: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, run_id: str, task: asyncio.Future[Any]) -> None:
        self.tasks[run_id] = task

    def forget(self, run_id: str, task: asyncio.Future[Any] | None = None) -> None:
        """Stop renewing ``run_id``'s lease; with ``task``, only if that task is the one
        watched (a newer attempt of the run may have replaced it)."""
        if task is None or self.tasks.get(run_id) is task:
            self.tasks.pop(run_id, None)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Leases]:
        self._task = asyncio.create_task(self._beat(), name=f"heartbeat {self.owner}")
        try:
            yield self
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _beat(self) -> None:
        interval = self.lease / 3
        backoff = Backoff(cap=min(MAX_BACKOFF, interval))
        delay = interval
        while True:
            await asyncio.sleep(delay)
            delay = interval
            watched = [(run_id, task) for run_id, task in self.tasks.items() if not task.done()]
            running = [run_id for run_id, _ in watched]
            if not running:
                continue
            try:
                now = self.clock()
                owned = await self.store.heartbeat(self.owner, running, now + self.lease, now)
            except Exception as exc:
                delay = backoff.next()
                log.warning(
                    "heartbeat failed (%s); leases may lapse; retrying in %.1f s",
                    _reason(exc),
                    delay,
                )
                continue
            backoff.reset()
            for run_id, task in watched:  # the attempts that were renewed, not newer ones
                if run_id not in owned and not task.done():
                    log.warning("run %s: lease lost (taken over or cancelled); stopping it", run_id)
                    self.lost.add(run_id)
                    task.cancel()


class Worker:
    """Executes runs of the workflows it knows, up to ``concurrency`` at once.

    Claims carry a lease of ``lease_seconds``; a heartbeat renews them every third of that.
    A run whose lease this worker lost (another worker took it, or it was cancelled) is
    stopped here at once; the store refuses its writes anyway (fencing token). A run claimed
    more than ``max_claims`` times in a row with its lease lapsing each time fails with
    ``PoisonRunError`` instead of being executed again.

    If this worker's own lease on a run lapses while it still executes it (the event loop
    stalled, or heartbeats failed for longer than the lease), its next claim may take the
    same run again under a new token. The old attempt is fenced by then: it is cancelled,
    and the new attempt starts once the old one has ended, so one worker never executes two
    attempts of a run at once. Everything the worker keeps about a run (``active``,
    ``claims``, ``contexts``, the heartbeat) belongs to its latest claim; an attempt that
    ends removes only its own entries.
    """

    def __init__(
        self,
        *,
        store: Store,
        workflows: dict[str, Workflow],
        concurrency: int,
        lease_seconds: float,
        poll_interval: float,
        poll_min_interval: float = 0.005,
        clock: Callable[[], float],
        retry: RetryPolicy,
        name: str | None = None,
        tickers: Sequence[Callable[[], Awaitable[object]]] = (),
        shutdown_grace: float = 30.0,
        max_claims: int = 5,
        sources: Sources | None = None,
        effects: Effects | None = None,
        mcp: McpServers | None = None,
    ) -> None:
        self.store = store
        self.sources = sources
        self.effects = effects
        self.mcp = mcp
        self.workflows = workflows
        self.concurrency = concurrency
        self.lease = lease_seconds
        self.poll = poll_interval
        self.poll_min = poll_min_interval
        self.clock = clock
        self.retry = retry
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tickers = list(tickers)
        self.shutdown_grace = shutdown_grace
        self.max_claims = max_claims
        self.active: dict[str, asyncio.Task[None]] = {}
        self.claims: dict[str, Claim] = {}
        self.contexts: dict[str, Context] = {}
        self.leases = Leases(store, self.id, lease_seconds, clock)
        self.executed = 0
        self.stopping = False
        self._freed = asyncio.Event()

    async def run(self, *, until_idle: bool = False, stop: asyncio.Event | None = None) -> int:
        """Work until ``stop`` is set (or, with ``until_idle``, until nothing is ready).

        It looks for work at once when the store signals that a run became ready (a commit
        of this process; another process's, by PostgreSQL LISTEN/NOTIFY or SQLite's
        ``data_version`` watch), and otherwise polls:
        every ``poll_min_interval`` right after activity, doubling while it finds nothing,
        up to every ``poll_interval`` (:class:`Poll`). When ``stop`` is set it claims nothing
        more and shuts down gracefully (see the module docstring).
        """
        if until_idle:
            return await self._work(until_idle=True, stop=stop, wake=None)
        async with self.store.wakeups() as wake:
            return await self._work(until_idle=False, stop=stop, wake=wake)

    async def _work(
        self, *, until_idle: bool, stop: asyncio.Event | None, wake: asyncio.Event | None
    ) -> int:
        async with self.leases.running():
            await self._run_tickers()  # deadlines that passed while no worker ran apply now
            ticking = asyncio.create_task(self._ticker_loop())
            stopper = asyncio.create_task(stop.wait()) if stop is not None else None
            try:
                await self._loop(until_idle, stopper, wake)
                ticking.cancel()
                await self._finish_in_flight()
            finally:
                ticking.cancel()
                if stopper is not None:
                    stopper.cancel()
                await self._drain()
        return self.executed

    async def _loop(
        self,
        until_idle: bool,
        stopper: asyncio.Task[bool] | None,
        wake: asyncio.Event | None,
    ) -> None:
        keys = list(self.workflows)
        backoff = Backoff()
        poll = Poll(self.poll_min, self.poll)
        while stopper is None or not stopper.done():
            if wake is not None:
                wake.clear()  # before claiming: a notification from now on ends the wait
            free = self.concurrency - len(self.active)
            claims: list[Claim] = []
            if free > 0:
                try:
                    got = await self._claim(keys, free, stopper)
                    if got is None:
                        break  # stopping, and the store does not answer
                    claims = got
                except Exception as exc:
                    delay = backoff.next()
                    log.warning("claiming failed (%s); retrying in %.1f s", _reason(exc), delay)
                    await self._pause(delay, stopper)
                    continue
                backoff.reset()
                if claims:
                    poll.active()
                for claim in claims:
                    self._spawn(claim)
            if until_idle and not claims and not self.active:
                break
            if claims and len(self.active) < self.concurrency:
                await asyncio.sleep(0)
                continue
            self._freed.clear()
            waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(self._freed.wait())]
            if stopper is not None:
                waiters.append(stopper)  # type: ignore[arg-type]
            if wake is not None and len(self.active) < self.concurrency:
                waiters.append(asyncio.ensure_future(wake.wait()))  # a wake-up: work is ready
            polling = not (self.active and free <= len(claims))
            if self.active and len(self.active) < self.concurrency:
                polling = True
            timeout = poll.next() if polling else None
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                if waiter is not stopper:
                    waiter.cancel()
            if self._freed.is_set() or (wake is not None and wake.is_set()):
                poll.active()  # a run ended here, or one became ready: more may follow

    async def _claim(
        self, keys: list[str], free: int, stopper: asyncio.Task[bool] | None
    ) -> list[Claim] | None:
        """Claim up to ``free`` runs. A stop while the store does not answer waits at most
        HAND_BACK_TIMEOUT more for the claim, then gives up on it (None)."""
        now = self.clock()
        claiming = asyncio.ensure_future(
            self.store.claim(self.id, keys, free, now, now + self.lease)
        )
        if stopper is None:
            return await claiming
        try:
            await asyncio.wait([claiming, stopper], return_when=asyncio.FIRST_COMPLETED)
            if not claiming.done():
                await asyncio.wait([claiming], timeout=HAND_BACK_TIMEOUT)
        except asyncio.CancelledError:
            claiming.cancel()
            raise
        if not claiming.done():
            claiming.cancel()
            log.warning("stopping: the store did not answer a claim; giving up on it")
            return None
        return claiming.result()

    async def _pause(self, delay: float, stopper: asyncio.Task[bool] | None) -> None:
        if stopper is None:
            await asyncio.sleep(delay)
        else:
            await asyncio.wait([stopper], timeout=delay)

    def _spawn(self, claim: Claim) -> None:
        previous = self.active.get(claim.id)
        if previous is not None:
            log.warning(
                "run %s: claimed again while its previous attempt still runs here (its lease "
                "lapsed); stopping that attempt, the new one starts when it has ended",
                claim.id,
            )
            previous.cancel()
        task = asyncio.create_task(self._execute(claim, previous), name=f"run {claim.id}")
        self.active[claim.id] = task
        self.claims[claim.id] = claim
        self.leases.lost.discard(claim.id)  # a loss of an earlier claim is not this one's
        self.leases.watch(claim.id, task)

    def _on_context(self, claim: Claim, ctx: Context) -> None:
        if self.claims.get(claim.id) is not claim:
            return  # an attempt superseded by a newer claim of its run
        self.contexts[ctx.run_id] = ctx
        if self.stopping:
            ctx.closing = True

    async def _execute(self, claim: Claim, previous: asyncio.Task[None] | None = None) -> None:
        task = asyncio.current_task()
        try:
            if previous is not None:  # fenced already by this claim; cancelled in _spawn
                await asyncio.gather(previous, return_exceptions=True)
            if claim.streak > self.max_claims:
                await fail_poisoned(self.store, claim, self.clock, self.max_claims)
                return
            wf = self.workflows[f"{claim.workflow}@{claim.version}"]
            started = self.clock()
            outcome = await execute(
                self.store, wf, claim, clock=self.clock, retry=self.retry,
                on_context=partial(self._on_context, claim), sources=self.sources,
                effects=self.effects, mcp=self.mcp,
            )  # fmt: skip
            log.info(
                "run %s (%s@%s): %s after %.3f s",
                claim.id,
                claim.workflow,
                claim.version,
                outcome.status,
                self.clock() - started,
            )
            if outcome.status == "lost" and self.stopping and claim.id not in self.leases.lost:
                # stopped at an operation boundary by the shutdown: hand it back now
                await self._hand_back(claim, self.clock())
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a store failure: hand the run back so that any worker retries
            if _is_store_error(exc):
                # the store's blip, not the run's fault: ready again as soon as a failure met
                # inside a step would make it (a restart must not park its runs for a lease)
                log.warning("run %s: %s; handing it back", claim.id, _reason(exc))
                delay = HANDBACK_DELAY
            else:  # a bug in the engine: a lease's pause keeps it from spinning
                log.exception(
                    "run %s: execution failed in the worker; it will be retried", claim.id
                )
                delay = self.lease
            await self._hand_back(claim, self.clock() + delay)
        finally:
            self.executed += 1
            if self.active.get(claim.id) is task:  # else a newer claim of the run owns them
                del self.active[claim.id]
                self.claims.pop(claim.id, None)
                self.contexts.pop(claim.id, None)
            self.leases.forget(claim.id, task)
            self._freed.set()

    async def _hand_back(self, claim: Claim, ready_at: float) -> None:
        try:
            now = self.clock()
            await asyncio.wait_for(
                self.store.release(claim.id, claim.token, ready_at, None, now), HAND_BACK_TIMEOUT
            )
        except Exception as exc:  # the lease lapses instead, and any worker resumes it then
            log.warning("run %s: could not hand back the claim (%s)", claim.id, _reason(exc))

    async def _run_tickers(self) -> bool:
        ok = True
        for tick in self.tickers:
            try:
                await tick()
            except Exception as exc:
                ok = False
                if _is_store_error(exc):
                    log.warning("housekeeping failed (%s); it runs again later", _reason(exc))
                else:
                    log.exception("housekeeping task failed; it runs again at the next tick")
        return ok

    async def _ticker_loop(self) -> None:
        if not self.tickers:
            return
        interval = min(max(self.poll, 0.05), 1.0)
        backoff = Backoff(initial=interval)
        delay = interval
        while True:
            await asyncio.sleep(delay)
            if await self._run_tickers():
                backoff.reset()
                delay = interval
            else:
                delay = backoff.next()

    async def _finish_in_flight(self) -> None:
        """Stopping: running runs stop at their next operation (the one in flight finishes
        and is journaled), within ``shutdown_grace`` seconds."""
        self.stopping = True
        for ctx in self.contexts.values():
            ctx.closing = True
        tasks = list(self.active.values())
        if tasks:
            log.info(
                "stopping: %d run(s) in flight get up to %.0f s to finish their step",
                len(tasks),
                self.shutdown_grace,
            )
            await asyncio.wait(tasks, timeout=self.shutdown_grace)

    async def _drain(self) -> None:
        """Cancel what still runs and hand it back so any worker resumes it now."""
        self.stopping = True
        claims = list(self.claims.values())
        tasks = list(self.active.values())
        for task in tasks:
            task.cancel()
        if tasks:
            log.info("cancelling %d run(s) still running; handing them back", len(tasks))
            await asyncio.gather(*tasks, return_exceptions=True)
        if claims:
            now = self.clock()
            await asyncio.gather(*(self._hand_back(c, now) for c in claims))


def _is_store_error(exc: BaseException) -> bool:
    """A failure of the store (ours, or the driver's) rather than a bug in the engine."""
    if isinstance(exc, StoreError | OSError | TimeoutError):
        return True
    module = type(exc).__module__
    return module.startswith(("psycopg", "sqlite3"))
