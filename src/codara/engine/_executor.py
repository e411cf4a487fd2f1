"""Executes one claimed run: replays its journal, runs the workflow, parks or finishes it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from codara.engine._branch import Branch, root_task
from codara.engine._codec import decode, dump_error, dumps, validate_input
from codara.engine._context import RESULT_OP, Abort, Context
from codara.engine._effects import compensate
from codara.engine._mcp import bind
from codara.engine._retry import RetryPolicy
from codara.errors import CodaraError
from codara.store import Claim, FencedError, JournalRecord, Store
from codara.trace import chain_key, genesis_hash

if TYPE_CHECKING:
    from codara.engine._effects import Effects
    from codara.mcp import McpServers
    from codara.sources import Sources

__all__ = ["Outcome", "Workflow", "execute"]

log = logging.getLogger("codara.worker")

WorkflowFn = Callable[[Context, Any], Any]


@dataclass(frozen=True)
class Workflow:
    name: str
    version: str
    fn: WorkflowFn
    compatible_with: tuple[str, ...]
    input_adapter: TypeAdapter[Any] | None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f"{self.name}@{v}" for v in (self.version, *self.compatible_with))


@dataclass(frozen=True)
class Outcome:
    status: str  # completed | failed | sleeping | waiting | queued (handed back) | lost
    output: Any = None
    error: dict[str, Any] | None = None


async def execute(
    store: Store,
    workflow: Workflow,
    claim: Claim,
    *,
    clock: Callable[[], float],
    retry: RetryPolicy,
    on_context: Callable[[Context], None] | None = None,
    step_timeout: float | None = None,
    sources: Sources | None = None,
    effects: Effects | None = None,
    mcp: McpServers | None = None,
) -> Outcome:
    journal = await store.journal(claim.id)
    key = chain_key()
    ctx = Context(
        store=store,
        run_id=claim.id,
        workflow=claim.workflow,
        version=claim.version,
        token=claim.token,
        signal_version=claim.signal_version,
        journal=journal,
        genesis=genesis_hash(claim.id, claim.workflow, claim.version, claim.input, key=key),
        clock=clock,
        default_retry=retry,
        step_timeout=step_timeout,
        key=key,
        sources=sources,
        effects=effects,
    )
    ctx._run_input = decode(claim.input)  # for effect policies: a fact the run did not make
    ctx.cancelling = claim.cancelling  # then replay what it did, to undo it; nothing new
    bind(ctx, mcp)  # for codara.mcp_read
    if on_context is not None:
        on_context(ctx)
    try:
        value = validate_input(workflow.input_adapter, decode(claim.input), workflow.name)
    except CodaraError as exc:
        return await _finish(store, ctx, claim, "failed", None, exc, clock)
    task = root_task(asyncio.get_running_loop(), workflow.fn(ctx, value), ctx.root)
    try:
        await asyncio.wait((task, ctx.quiesced), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the worker is stopping or lost the lease
        ctx.closing = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if claim.cancelling:
        return await _cancelled(store, sources, ctx, claim, task, clock)
    if not task.done():
        ctx.closing = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return await _park(store, ctx, claim, clock)
    failure = task.exception()
    if ctx.handback is not None:  # the store failed under the run: not the run's fault
        return await _hand_back(store, ctx, claim, clock)
    if ctx.closing:  # an abort (lease lost) that workflow code swallowed: write nothing more
        return Outcome("lost")
    if failure is None:
        outcome = await _finish(store, ctx, claim, "completed", task.result(), None, clock)
        return _ended(sources, ctx, outcome)
    if isinstance(failure, Abort | FencedError):
        log.info("run %s: another worker owns it now; stopped here", claim.id)
        return Outcome("lost")
    if not isinstance(failure, Exception):  # SystemExit and the like: the process is ending
        raise failure
    if ctx._effects_done:  # undo what happened, newest first, each journaled (docs/effects.md)
        undo = root_task(asyncio.get_running_loop(), compensate(ctx), ctx.root)
        await asyncio.gather(undo, return_exceptions=True)
        if ctx.handback is not None:
            return await _hand_back(store, ctx, claim, clock)
        if ctx.closing or isinstance(undo.exception(), Abort | FencedError):
            return Outcome("lost")
    return _ended(sources, ctx, await _finish(store, ctx, claim, "failed", None, failure, clock))


async def _cancelled(
    store: Store,
    sources: Sources | None,
    ctx: Context,
    claim: Claim,
    task: asyncio.Task[Any],
    clock: Callable[[], float],
) -> Outcome:
    """A run cancelled after effects happened: replayed up to what it had done (nothing new
    runs: ``ctx.cancelling``), its compensable effects are undone newest first, in a branch
    of their own (``cancel``), each journaled as on failure; then it ends ``cancelled``."""
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if ctx.handback is not None:
        return await _hand_back(store, ctx, claim, clock)
    if ctx.closing:
        return Outcome("lost")
    ctx.cancelling = False
    if ctx._effects_done:
        branch = Branch(ctx, "cancel", ctx.root.time)
        branch.started = False  # the undo task is this branch itself, not a child of it
        undo = root_task(asyncio.get_running_loop(), compensate(ctx), branch)
        await asyncio.gather(undo, return_exceptions=True)
        if ctx.handback is not None:
            return await _hand_back(store, ctx, claim, clock)
        if ctx.closing or isinstance(undo.exception(), Abort | FencedError):
            return Outcome("lost")
    log.info("run %s cancelled; %d effect(s) undone", claim.id, len(ctx._effects_done))
    return _ended(sources, ctx, await _finish(store, ctx, claim, "cancelled", None, None, clock))


def _ended(sources: Sources | None, ctx: Context, outcome: Outcome) -> Outcome:
    """Tell the read observers (lineage) that a run which read data has ended."""
    if (
        sources is not None
        and sources.observers
        and ctx._data["reads"]
        and outcome.status in ("completed", "failed", "cancelled")
    ):
        sources.observe_end(ctx.run_id, ctx.workflow, outcome.status)
    return outcome


async def _finish(
    store: Store,
    ctx: Context,
    claim: Claim,
    status: str,
    value: Any,
    exc: BaseException | None,
    clock: Callable[[], float],
) -> Outcome:
    started = clock()
    if status == "cancelled":
        output: str | None = None
    elif exc is None:
        try:
            output = dumps(value)
        except TypeError as err:
            status, exc, output = "failed", err, None
    else:
        output = None
    error = dump_error(exc) if exc is not None else None
    record: JournalRecord = ctx._record(
        RESULT_OP, "result", status, status, None, output, error, started, 1
    )
    try:
        # the run's row stores what the journal holds (masked if the run read originals)
        await store.finish(claim.id, claim.token, status, record.output, record.error, record,
                           clock())  # fmt: skip
    except FencedError:
        return Outcome("lost")
    if exc is not None:
        log.warning("run %s failed: %s", claim.id, exc)
    return Outcome(status, value if exc is None else None, decode(error))


async def _park(store: Store, ctx: Context, claim: Claim, clock: Callable[[], float]) -> Outcome:
    deadlines = [b.deadline for b in ctx.blocks if b.deadline is not None]
    signals = sorted({b.signal for b in ctx.blocks if b.signal is not None})
    status = "waiting" if signals else "sleeping"
    ready_at = min(deadlines) if deadlines else None
    try:
        newer = await store.suspend(
            claim.id,
            claim.token,
            status,
            ready_at,
            ",".join(signals) or None,
            ctx.signal_version,
            clock(),
        )
        if newer is not None:  # a signal arrived while we were parking: run again now
            await store.release(claim.id, claim.token, clock(), None, clock())
            return Outcome("queued")
    except FencedError:
        return Outcome("lost")
    return Outcome(status)


HANDBACK_DELAY = 1.0
"""Seconds before a run handed back after a store failure may be claimed again."""


async def _hand_back(
    store: Store, ctx: Context, claim: Claim, clock: Callable[[], float]
) -> Outcome:
    assert ctx.handback is not None
    cause = ctx.handback.cause
    log.warning("run %s: the store failed under it (%s); handed back to resume", claim.id, cause)
    note = dumps({"type": "StoreUnavailable", "message": str(cause)[:500]})
    try:
        now = clock()
        await store.release(claim.id, claim.token, now + HANDBACK_DELAY, note, now)
    except Exception as exc:  # still down: the lease lapses and any worker resumes it
        log.warning("run %s: could not hand it back (%s); its lease will lapse", claim.id, exc)
    return Outcome("queued", error={"type": "StoreUnavailable", "message": str(cause)})
