"""The worker loop: claim ready runs, execute them concurrently, keep their leases alive."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence

from codara.engine._executor import Workflow, execute
from codara.engine._retry import RetryPolicy
from codara.store import Claim, Store

__all__ = ["Worker"]

log = logging.getLogger("codara.worker")


class Worker:
    """Executes runs of the workflows it knows, up to ``concurrency`` at once.

    Claims carry a lease of ``lease_seconds``; a heartbeat renews them every third of that.
    A run whose lease this worker lost (another worker took it, or it was cancelled) is
    stopped here at once; the store refuses its writes anyway (fencing token).
    """

    def __init__(
        self,
        *,
        store: Store,
        workflows: dict[str, Workflow],
        concurrency: int,
        lease_seconds: float,
        poll_interval: float,
        clock: Callable[[], float],
        retry: RetryPolicy,
        name: str | None = None,
        tickers: Sequence[Callable[[], Awaitable[object]]] = (),
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.concurrency = concurrency
        self.lease = lease_seconds
        self.poll = poll_interval
        self.clock = clock
        self.retry = retry
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tickers = list(tickers)
        self.active: dict[str, asyncio.Task[None]] = {}
        self.claims: dict[str, Claim] = {}
        self.executed = 0
        self._freed = asyncio.Event()

    async def run(self, *, until_idle: bool = False, stop: asyncio.Event | None = None) -> int:
        """Work until ``stop`` is set (or, with ``until_idle``, until nothing is ready).

        While idle it looks for work every ``poll_interval``, and at once when the store
        signals that a run became ready (PostgreSQL LISTEN/NOTIFY).
        """
        if until_idle:
            return await self._work(until_idle=True, stop=stop, wake=None)
        async with self.store.wakeups() as wake:
            return await self._work(until_idle=False, stop=stop, wake=wake)

    async def _work(
        self, *, until_idle: bool, stop: asyncio.Event | None, wake: asyncio.Event | None
    ) -> int:
        keys = list(self.workflows)
        heartbeat = asyncio.create_task(self._heartbeat())
        await self._run_tickers()  # deadlines that passed while no worker ran apply now
        ticking = asyncio.create_task(self._ticker_loop())
        stopper = asyncio.create_task(stop.wait()) if stop is not None else None
        try:
            while stop is None or not stop.is_set():
                if wake is not None:
                    wake.clear()  # before claiming: a notification from now on ends the wait
                free = self.concurrency - len(self.active)
                claims: list[Claim] = []
                if free > 0:
                    now = self.clock()
                    claims = await self.store.claim(self.id, keys, free, now, now + self.lease)
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
                    waiters.append(asyncio.ensure_future(wake.wait()))  # a NOTIFY: work is ready
                timeout = None if (self.active and free <= len(claims)) else self.poll
                if self.active and len(self.active) < self.concurrency:
                    timeout = self.poll
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    if waiter is not stopper:
                        waiter.cancel()
        finally:
            heartbeat.cancel()
            ticking.cancel()
            if stopper is not None:
                stopper.cancel()
            await self._drain()
        return self.executed

    def _spawn(self, claim: Claim) -> None:
        task = asyncio.create_task(self._execute(claim), name=f"run {claim.id}")
        self.active[claim.id] = task
        self.claims[claim.id] = claim

    async def _execute(self, claim: Claim) -> None:
        try:
            wf = self.workflows[f"{claim.workflow}@{claim.version}"]
            started = self.clock()
            outcome = await execute(self.store, wf, claim, clock=self.clock, retry=self.retry)
            log.info(
                "run %s (%s@%s): %s after %.3f s",
                claim.id,
                claim.workflow,
                claim.version,
                outcome.status,
                self.clock() - started,
            )
        except asyncio.CancelledError:
            pass
        except Exception:  # a store failure: hand the run back so that any worker retries it
            log.exception("run %s: execution failed in the worker; it will be retried", claim.id)
            try:
                now = self.clock()
                await self.store.release(claim.id, claim.token, now + self.lease, None, now)
            except Exception:  # the heartbeat must not renew it then: see _heartbeat
                log.exception("run %s: could not hand back the claim", claim.id)
        finally:
            self.executed += 1
            self.active.pop(claim.id, None)
            self.claims.pop(claim.id, None)
            self._freed.set()

    async def _run_tickers(self) -> None:
        for tick in self.tickers:
            try:
                await tick()
            except Exception:
                log.exception("housekeeping task failed; it runs again at the next tick")

    async def _ticker_loop(self) -> None:
        if not self.tickers:
            return
        while True:
            await asyncio.sleep(min(max(self.poll, 0.05), 1.0))
            await self._run_tickers()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            if not self.active:
                continue
            try:
                now = self.clock()
                running = list(self.active)
                owned = await self.store.heartbeat(self.id, running, now + self.lease, now)
            except Exception:
                log.exception("heartbeat failed; leases may expire")
                continue
            for run_id in running:
                task = self.active.get(run_id)
                if task is not None and run_id not in owned and not task.done():
                    log.warning("run %s: lease lost (taken over or cancelled); stopping it", run_id)
                    task.cancel()

    async def _drain(self) -> None:
        """On shutdown: stop running runs and hand them back so any worker resumes them now."""
        claims = list(self.claims.values())
        tasks = list(self.active.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for claim in claims:
            try:
                now = self.clock()
                await self.store.release(claim.id, claim.token, now, None, now)
            except Exception:  # the lease will lapse instead
                log.exception("run %s: could not hand back the claim", claim.id)
