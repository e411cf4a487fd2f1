"""The workflow context: durable steps, transactions, timers and waits for signals.

Every call on the context is an *operation*, identified by ``(branch, op)``: the branch is the
task the call runs in (see ``_branch``), ``op`` its number in that branch's call order. Its
result is one journal row (two for a wait: the deadline, then the signal or timeout), written
in the same statement that proves this worker still owns the run. When a run is replayed
after a crash, an operation whose row exists returns the journaled result without running
again, whatever order concurrent branches finish in.

Waits and sleeps do not hold the worker: a blocked operation parks its branch, and once no
operation of the run is doing work any more, the executor stores the run's wake-up time and
drops it from memory (see ``_executor``).

Journal counters (``seq`` and the chain head) advance only once a row is durable: a store
error leaves them as they were, and hands the run back (``Handback``) instead of failing it.
"""

from __future__ import annotations

import asyncio
import inspect
import random as _random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from types import CoroutineType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from codara.engine._branch import Branch, current_branch, outside_branches
from codara.engine._codec import (
    PASS_THROUGH,
    decode,
    dump_error,
    dumps,
    dumps_lenient,
    result_adapter,
)
from codara.engine._privacy import RunOriginals
from codara.engine._step import _PLAIN_STEPS, Step, _plain_step
from codara.errors import (
    NonDeterminismError,
    StepFailedError,
    StepTimeoutError,
    StoreError,
    StoreUnavailableError,
    WaitTimeoutError,
    WorkflowCodeError,
)
from codara.store import FencedError, JournalRecord, Store, Tx
from codara.trace import ChainKey, row_hash

if TYPE_CHECKING:
    from codara.engine._effects import Done, Effects
    from codara.engine._read import ReadBatch, ReadResult
    from codara.engine._retry import RetryPolicy
    from codara.sources import Sources

__all__ = ["Context", "Step", "set_fault_hook"]

_PLAIN_RESULTS = frozenset({int, float, str, bool, type(None), dict, list})

T = TypeVar("T")
P = ParamSpec("P")

# Operation numbers below zero are not operations: the final result (-1), a fork's origin
# (-2) and an operator's retry (-3) are rows the context reads but never replays.
RESULT_OP, FORK_OP, RETRY_OP = -1, -2, -3

FaultHook = Callable[[str, str], None]
_fault_hook: FaultHook | None = None


def set_fault_hook(hook: FaultHook | None) -> None:
    """For crash tests: ``hook(point, step_name)`` is called at ``"step.executed"`` (the
    step's function returned, its row is not yet written) and ``"step.journaled"`` (the row
    is durable, the result not yet returned to the workflow)."""
    global _fault_hook
    _fault_hook = hook


class Abort(BaseException):
    """Unwinds a workflow that must stop running here (lease lost, cancelled, parked).

    A BaseException, so that workflow code catching ``Exception`` cannot swallow it.
    """


class Handback(Abort):
    """The store failed under the run (connection lost, database locked): stop here and hand
    the run back, to be resumed from its journal. Never a failure of the run."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(slots=True)
class Block:
    """A branch parked on a durable wait or a timer."""

    deadline: float | None
    signal: str | None


def _run_start_time(run_id: str) -> float:
    """The run's creation time, from its id (``new_run_id``: 12 hex digits of milliseconds),
    so that ``ctx.now()`` before any operation is the same on every replay."""
    try:
        return int(run_id[:12], 16) / 1000.0
    except ValueError:
        return 0.0


class Context:
    """Handed to every workflow function as its first argument.

    What is safe in workflow code (outside steps): the context's operations, ``ctx.now()``,
    ``ctx.random()``, ``ctx.uuid4()``, pure computation on their results, and
    ``asyncio.gather``/``create_task``/``TaskGroup`` of coroutines that use them. Anything
    that reads the outside world (the clock, ``random``, files, the network, a database)
    belongs in a step, or a replay may take another path than the first run.
    """

    def __init__(
        self,
        *,
        store: Store,
        run_id: str,
        workflow: str,
        version: str,
        token: int,
        signal_version: int,
        journal: list[JournalRecord],
        genesis: str,
        clock: Callable[[], float],
        default_retry: RetryPolicy,
        step_timeout: float | None = None,
        key: ChainKey,
        sources: Sources | None = None,
        effects: Effects | None = None,
    ) -> None:
        self._sources = sources
        self._effects = effects
        self._effects_done: list[Done] = []  # compensable effects that happened
        self._run_input: Any = None  # the run's input, as stored (a trusted fact)
        self._read_rows: dict[str, list[Any]] = {}  # source -> rows of its latest batch
        self._model_said: list[str] = []  # what models answered in this run (provenance)
        self._reviewed: dict[str, Any] = {}  # gate step -> the proposal a person decided
        self._data: dict[str, Any] = {"reads": 0, "stale": False, "quarantined": 0}
        self._shown = RunOriginals()  # what unmasked reads gave the run: masked when journaled
        self._key = key  # hashes journal rows: HMAC with CODARA_AUDIT_KEY, or SHA-256
        self.run_id = run_id
        self.workflow = workflow
        self.version = version
        self._store = store
        self._token = token
        self.signal_version = signal_version
        self._clock = clock
        self._retry = default_retry
        self._step_timeout = step_timeout
        self._by_key: dict[tuple[str, int], list[JournalRecord]] = {}
        retried = max((r.seq for r in journal if r.op == RETRY_OP), default=-1)
        for row in journal:
            if row.op < 0 or (row.seq < retried and row.status not in ("ok", "claimed")):
                continue  # not an operation, or a failure an operator chose to retry (an
                # effect's claim stays: the retry asks its reconcile before doing it again)
            self._by_key.setdefault((row.branch, row.op), []).append(row)
        self._seq = journal[-1].seq + 1 if journal else 0
        self._prev = journal[-1].hash if journal else genesis
        self._active = 0
        self._progress = 0
        self.blocks: list[Block] = []
        self.quiesced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closing = False
        self.cancelling = False  # replaying a cancelled run to undo its effects
        self.handback: Handback | None = None
        self.root = Branch(self, "", _run_start_time(run_id))
        self._wlock = asyncio.Lock()  # rows are numbered and written one at a time, in order

    # -- deterministic helpers -------------------------------------------------------------
    def now(self) -> float:
        """The run's logical time (UNIX seconds): when the branch's last operation finished
        (the run's creation before any). The same on every replay, so workflow code may
        branch on it; it does not advance while a step runs. For the wall clock, read it in
        a step."""
        return self._branch("ctx.now()").time

    def random(self) -> float:
        """A float in [0, 1) that replays identically: seeded by the run, the branch and the
        call's number. Not for secrets (it is derived from the run id)."""
        return self._rng("random").random()

    def uuid4(self) -> uuid.UUID:
        """A version-4 UUID that replays identically (see :meth:`random`)."""
        return uuid.UUID(int=self._rng("uuid4").getrandbits(128), version=4)

    def _rng(self, what: str) -> _random.Random:
        branch = self._branch(f"ctx.{what}()")
        n = branch.rand_n
        branch.rand_n = n + 1
        return _random.Random(f"{self.run_id}/{branch.path}/{n}")  # noqa: S311 - replayable

    @property
    def is_replaying(self) -> bool:
        """True while journaled operations remain that the workflow has not reached again."""
        return bool(self._by_key)

    # -- operation identity ----------------------------------------------------------------
    def _branch(self, what: str) -> Branch:
        branch = current_branch()
        if branch is None or branch.ctx is not self:
            raise WorkflowCodeError(
                f"run {self.run_id}: {what} was called outside the workflow's own tasks",
                hint="call context operations from the workflow function or tasks it "
                "creates, never from inside a step's function or another run",
            )
        if branch.task is not None and branch.task is not asyncio.current_task():
            raise WorkflowCodeError(
                f"run {self.run_id}: two tasks share branch {branch.path or 'root'!r}",
                hint="another task factory replaced Codara's on this event loop; chain to "
                "the previous factory instead of replacing it",
            )
        return branch

    def _take_op(self, what: str) -> tuple[Branch, int, list[JournalRecord] | None]:
        if self.closing:
            raise Abort
        branch = self._branch(what)
        self._progress += 1
        op = branch.next_op
        branch.next_op = op + 1
        rows = self._by_key.pop((branch.path, op), None)
        if rows is None and self.cancelling:
            raise Abort  # a cancelled run replays what it did, and does nothing new
        return branch, op, rows

    # -- journal writes --------------------------------------------------------------------
    def _record(
        self,
        op: int,
        kind: str,
        name: str,
        status: str,
        input: str | None,
        output: str | None,
        error: str | None,
        started: float,
        attempts: int,
        branch: str = "",
    ) -> JournalRecord:
        if self._shown.revealed:
            mask = self._shown.mask_journal
            input, output, error = mask(input), mask(output), mask(error)
        seq = self._seq
        prev = self._prev
        finished = self._clock()
        h = row_hash(
            prev, self.run_id, seq, op, kind, name, status, input, output, error,
            started, finished, attempts, branch, key=self._key,
        )  # fmt: skip
        self._seq = seq + 1
        self._prev = h
        return JournalRecord(
            self.run_id, seq, op, kind, name, status, input, output, error,
            started, finished, attempts, prev, h, branch,
        )  # fmt: skip

    def _lost(self, exc: BaseException) -> Abort:
        self.closing = True
        if isinstance(exc, FencedError):
            return Abort()
        self.handback = Handback(exc)
        return self.handback

    async def _write(self, write: Callable[[], Awaitable[T]]) -> T:
        """Write under the journal lock; on failure, put the counters back as they were."""
        async with self._wlock:
            seq, prev = self._seq, self._prev
            try:
                return await write()
            except BaseException as exc:
                self._seq, self._prev = seq, prev
                if isinstance(exc, FencedError | StoreError):
                    raise self._lost(exc) from None
                raise

    async def _append(self, make: Callable[[], JournalRecord]) -> JournalRecord:
        # ``_write`` inlined: this is the hot path, one journal row per step.
        async with self._wlock:
            seq, prev = self._seq, self._prev
            record = make()
            try:
                await self._store.append(self.run_id, self._token, record)
            except BaseException as exc:
                self._seq, self._prev = seq, prev
                if isinstance(exc, FencedError | StoreError):
                    raise self._lost(exc) from None
                raise
            return record

    # The run is quiet (and may be parked) when no operation is executing, some branch is
    # parked, and nothing moved for a few loop turns: no operation started, no branch task
    # created or finished. The turns let branches that were just created, or whose children
    # just finished, reach their next operation first (a gather's result takes two turns).
    _QUIET_TURNS = 3

    def progressed(self) -> None:
        """A branch task of this run was created or finished (called by the task factory)."""
        self._progress += 1

    def _done_working(self) -> None:
        self._active -= 1
        if self.blocks and self._active == 0:
            self._watch_quiet()

    def _watch_quiet(self) -> None:
        asyncio.get_running_loop().call_soon(self._check_quiet, self._progress, 0)

    def _check_quiet(self, seen: int, turns: int) -> None:
        if self._active != 0 or not self.blocks or self.quiesced.done():
            return  # the operation now executing looks again when it is done
        if self._progress != seen:
            turns = 0
        elif turns + 1 >= self._QUIET_TURNS:
            self.quiesced.set_result(None)
            return
        else:
            turns += 1
        asyncio.get_running_loop().call_soon(self._check_quiet, self._progress, turns)

    async def _park(self, block: Block) -> None:
        self.blocks.append(block)
        self._progress += 1
        if self._active == 0:
            self._watch_quiet()
        await asyncio.get_running_loop().create_future()  # cancelled by the executor

    # -- the operations --------------------------------------------------------------------
    @overload
    async def step(
        self,
        name: str | Step,
        fn: Callable[P, Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T: ...

    @overload
    async def step(
        self, name: str | Step, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    async def step(
        self, name: str | Step, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` for this run and journal its result.

        ``name`` is the step's name, or a :class:`Step` with options (retry, timeout,
        result type). On replay the journaled result is returned (validated into ``fn``'s
        declared return type, or ``Step.result_type``) and ``fn`` is not called. A step that
        raises is retried by the retry policy; when it gives up, the error is journaled and
        :class:`~codara.errors.StepFailedError` raised, on replay too. ``fn`` may be sync or
        async; a sync ``fn`` runs on the event loop, so wrap blocking I/O in
        ``asyncio.to_thread``.

        A step runs *at least once*: a crash after ``fn`` returned and before its row is
        durable runs it again on resume. Its *result* is recorded once. Give external
        effects an idempotency key (``ctx.run_id`` plus the step name), or use
        :meth:`transaction` for writes to the store's own database.
        """
        opts = _PLAIN_STEPS.get(name) if type(name) is str else name
        if opts is None:
            opts = _plain_step(name)  # type: ignore[arg-type]
        assert isinstance(opts, Step)
        adapter = result_adapter(fn, opts.result_type)
        branch, op, rows = self._take_op(f"step {opts.name!r}")
        if rows is not None:
            return self._replay(branch, rows[0], "step", opts.name, adapter)
        self._active += 1
        try:
            started = self._clock()
            policy = opts.retry or self._retry
            timeout = opts.timeout if opts.timeout is not None else self._step_timeout
            attempt = 1
            while True:
                try:
                    with outside_branches():
                        if timeout is None:  # _call inlined: the common case
                            result = fn(*args, **kwargs)
                            if type(result) is CoroutineType or (
                                type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result)
                            ):
                                result = await result
                        else:
                            result = await _call(opts.name, fn, args, kwargs, timeout)
                    if adapter is None and type(result) not in _PLAIN_RESULTS:
                        raise _untyped_result(opts.name, result)
                    break
                except Exception as exc:
                    if isinstance(exc, WorkflowCodeError) or not policy.should_retry(exc, attempt):
                        record = await self._append(
                            partial(
                                self._record,
                                op,
                                "step",
                                opts.name,
                                "error",
                                _args_json(args, kwargs),
                                None,
                                dump_error(exc),
                                started,
                                attempt,
                                branch.path,
                            )
                        )
                        branch.time = max(branch.time, record.finished_at)
                        if isinstance(exc, WorkflowCodeError):
                            raise
                        raise _step_failed(opts.name, exc) from exc
                    await asyncio.sleep(policy.delay(attempt))
                    attempt += 1
            if _fault_hook is not None:
                _fault_hook("step.executed", opts.name)
            record = await self._append(
                partial(
                    self._record,
                    op,
                    "step",
                    opts.name,
                    "ok",
                    _args_json(args, kwargs),
                    dumps(result),
                    None,
                    started,
                    attempt,
                    branch.path,
                )
            )
            branch.time = max(branch.time, record.finished_at)
            if _fault_hook is not None:
                _fault_hook("step.journaled", opts.name)
            if self._shown.revealed:  # what a replay will return: the journaled (masked) value
                value = decode(record.output)
                return (
                    value
                    if adapter is None or adapter is PASS_THROUGH
                    else (adapter.validate_python(value))
                )
            return result
        finally:
            self._done_working()

    async def transaction(
        self,
        name: str,
        fn: Callable[..., Coroutine[Any, Any, T]],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """Run ``await fn(tx, *args, **kwargs)`` in the store's database transaction.

        Its writes (through ``tx.execute``) commit together with the journal row, so they
        happen exactly once even if the worker is killed at any moment. Use it for effects on
        tables in the same database; for anything else use :meth:`step` with an idempotency
        key.
        """
        adapter = result_adapter(fn, None)
        branch, op, rows = self._take_op(f"transaction {name!r}")
        if rows is not None:
            return self._replay(branch, rows[0], "transaction", name, adapter)  # type: ignore[no-any-return]
        self._active += 1
        try:
            started = self._clock()
            args_json = _args_json(args, kwargs)
            failed: list[BaseException] = []

            async def body(tx: Tx) -> Any:
                try:
                    with outside_branches():
                        return await fn(tx, *args, **kwargs)
                except BaseException as exc:
                    failed.append(exc)
                    raise

            def build(result: Any) -> JournalRecord:
                return self._record(
                    op, "transaction", name, "ok", args_json, dumps(result), None, started, 1,
                    branch.path,
                )  # fmt: skip

            try:
                async with self._wlock:
                    seq, prev = self._seq, self._prev
                    try:
                        result, record = await self._store.transaction(
                            self.run_id, self._token, body, build
                        )
                    except BaseException:
                        self._seq, self._prev = seq, prev  # rolled back: nothing came after it
                        raise
            except Exception as exc:
                user = failed[0] if failed else None
                if isinstance(exc, FencedError | StoreError):
                    # the store's own failure (it may have come up through the body's SQL,
                    # a lost connection the store reported as StoreUnavailableError): the
                    # transaction rolled back, nothing of it happened; hand the run back
                    raise self._lost(exc) from None
                if not isinstance(user, Exception) or isinstance(user, StoreUnavailableError):
                    raise
                record = await self._append(
                    partial(
                        self._record,
                        op,
                        "transaction",
                        name,
                        "error",
                        args_json,
                        None,
                        dump_error(user),
                        started,
                        1,
                        branch.path,
                    )
                )
                branch.time = max(branch.time, record.finished_at)
                raise _step_failed(name, user) from exc
            branch.time = max(branch.time, record.finished_at)
            return result  # type: ignore[no-any-return]
        finally:
            self._done_working()

    @property
    def data(self) -> dict[str, Any]:
        """What the run's reads met so far (``stale``, ``quarantined``, ``reads``)."""
        return dict(self._data)

    def _saw(self, batch: ReadBatch) -> None:
        self._read_rows[str(batch.lineage.get("source"))] = batch.rows  # trusted facts
        self._data["reads"] += 1
        self._data["stale"] = self._data["stale"] or batch.stale
        self._data["quarantined"] += batch.quarantined

    async def read(
        self, source: str, target: str, /, *, unmasked: Sequence[str] = (), **params: Any
    ) -> ReadResult:
        """Read ``target`` (a query, an endpoint, a path pattern) from the declared source
        ``source`` with bound ``params``, all of it: see :meth:`read_batches`."""
        from codara.engine._read import ReadResult

        batches = self.read_batches(source, target, unmasked=unmasked, **params)
        return ReadResult.of([b async for b in batches])

    def read_batches(
        self, source: str, target: str, /, *, unmasked: Sequence[str] = (), **params: Any
    ) -> AsyncIterator[ReadBatch]:
        """Read ``target`` from ``source`` batch by batch, each batch one journal row.

        The request is checked against the source's scope before anything is read (a
        refusal raises :class:`~codara.errors.ScopeError`). Records the connector or the
        source's model refuses go to quarantine with their reason; freshness is judged
        per batch (:class:`~codara.errors.StaleDataError` or ``stale``). On replay the
        journaled batches come back and the read goes on from the last one: a journaled
        batch is not read again. See :mod:`codara.engine._read`.

        Personal fields come masked (tokens), except those named in ``unmasked`` that the
        source allows this workflow to see (``[sources.NAME] unmasked``; else ScopeError):
        their originals come from the vault, and each such read is recorded."""
        from codara.engine._read import read_batches

        return read_batches(self, self._sources, source, target, dict(params), tuple(unmasked))

    async def quarantine(
        self,
        source: str,
        record: Any,
        /,
        *,
        rule: str,
        reason: str,
        where: str = "",
    ) -> str:
        """Quarantine ``record`` (read from ``source``) with ``rule`` and ``reason``, for a
        fault the source's model cannot see (a duplicate id); journaled, masked as a read's
        record; returns the quarantine id (docs/sources.md)."""
        from codara.engine._read import quarantine

        return await quarantine(self, self._sources, source, record, rule, reason, where)

    async def effect(self, name: str, args: Any = None, /, *, key: str | None = None) -> Any:
        """Do effect ``name`` (``App.effect``) once for this operation, its key (``key``,
        or the run's and the operation's) journaled first; see docs/effects.md."""
        from codara.engine._effects import run_effect

        return await run_effect(self, name, args, key)

    async def sleep(self, seconds: float, name: str = "sleep") -> None:
        """Sleep durably: the run is parked in the database and woken after ``seconds``."""
        branch, op, rows = self._take_op(f"sleep {name!r}")
        if rows is None:
            wake = self._clock() + max(0.0, seconds)
            started = self._clock()
            await self._append(
                partial(
                    self._record,
                    op,
                    "sleep",
                    name,
                    "ok",
                    None,
                    dumps({"wake_at": wake}),
                    None,
                    started,
                    1,
                    branch.path,
                )
            )
        else:
            self._check(branch, rows[0], "sleep", name)
            wake = float(decode(rows[0].output)["wake_at"])
        if self._clock() < wake:
            await self._park(Block(deadline=wake, signal=None))
        branch.time = max(branch.time, wake)

    async def wait_for(self, signal: str, *, timeout: float | None = None) -> Any:
        """Wait durably for the signal ``signal`` sent to this run; return its payload.

        Raises :class:`~codara.errors.WaitTimeoutError` when ``timeout`` seconds pass first.
        The wait holds no thread and no memory: the run is parked in the database.
        """
        branch, op, rows = self._take_op(f"wait {signal!r}")
        if rows is None:
            deadline = None if timeout is None else self._clock() + max(0.0, timeout)
            started = self._clock()
            await self._append(
                partial(
                    self._record,
                    op,
                    "wait",
                    signal,
                    "ok",
                    None,
                    dumps({"deadline": deadline, "timeout": timeout}),
                    None,
                    started,
                    1,
                    branch.path,
                )
            )
        else:
            self._check(branch, rows[0], "wait", signal)
            if len(rows) > 1:
                branch.time = max(branch.time, rows[1].finished_at)
                return self._signal_result(rows[1], signal, timeout)
            deadline = decode(rows[0].output)["deadline"]
        started = self._clock()
        self._active += 1
        try:

            def build(payload: str | None) -> JournalRecord:
                return self._record(
                    op, "signal", signal, "ok", None, payload, None, started, 1, branch.path
                )

            async def consume() -> JournalRecord | None:
                return await self._store.consume_signal(
                    self.run_id, self._token, signal, self._seq, build
                )

            got = await self._write(consume)
            if got is not None:
                branch.time = max(branch.time, got.finished_at)
                return decode(got.output)
            if deadline is not None and self._clock() >= deadline:
                err = dumps({"type": "WaitTimeoutError", "message": "timed out"})
                record = await self._append(
                    partial(
                        self._record,
                        op,
                        "signal",
                        signal,
                        "error",
                        None,
                        None,
                        err,
                        started,
                        1,
                        branch.path,
                    )
                )
                branch.time = max(branch.time, record.finished_at)
                raise WaitTimeoutError(signal, timeout)
        finally:
            self._done_working()
        await self._park(Block(deadline=deadline, signal=signal))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- replay ----------------------------------------------------------------------------
    def _check(self, branch: Branch, row: JournalRecord, kind: str, name: str) -> None:
        if row.kind != kind or row.name != name:
            where = f"branch {row.branch!r} " if row.branch else ""
            raise NonDeterminismError(
                f"run {self.run_id}: operation #{row.op} of {where or 'the workflow '}was "
                f"{row.kind} {row.name!r} when the run first executed, but the workflow now "
                f"calls {kind} {name!r}",
                hint="workflow code changed in a way that breaks running runs: give the new "
                "code a new version, or make the change only for new runs",
            )

    def _replay(
        self, branch: Branch, row: JournalRecord, kind: str, name: str, adapter: Any
    ) -> Any:
        self._check(branch, row, kind, name)
        branch.time = max(branch.time, row.finished_at)
        if row.status != "ok":
            err = decode(row.error) or {}
            raise StepFailedError(
                name,
                str(err.get("type", "Error")),
                str(err.get("message", "")),
                non_retryable=bool(err.get("non_retryable")),
            )
        value = decode(row.output)
        if adapter is None or adapter is PASS_THROUGH:
            return value
        return adapter.validate_python(value)

    def _signal_result(self, row: JournalRecord, signal: str, timeout: float | None) -> Any:
        if row.status != "ok":
            raise WaitTimeoutError(signal, timeout)
        return decode(row.output)


def _args_json(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return dumps_lenient([args, kwargs] if kwargs else args)


def _step_failed(name: str, exc: Exception) -> StepFailedError:
    return StepFailedError(
        name,
        f"{type(exc).__module__}.{type(exc).__qualname__}",
        str(exc),
        non_retryable=bool(getattr(exc, "non_retryable", False)),
    )


async def _call(
    name: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    result = fn(*args, **kwargs)
    if type(result) is CoroutineType or (
        type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result)
    ):
        if timeout is None:
            return await result
        try:
            async with asyncio.timeout(timeout) as scope:
                return await result
        except TimeoutError:
            if scope.expired():
                raise StepTimeoutError(name, timeout) from None
            raise
    return result


def _untyped_result(name: str, result: Any) -> WorkflowCodeError:
    kind = type(result).__qualname__
    return WorkflowCodeError(
        f"step {name!r} returned a {kind}, but its function declares no return type, so a "
        f"replay would give back plain JSON instead of a {kind}",
        hint=f"annotate the function's return type, or pass "
        f"codara.Step({name!r}, result_type={kind})",
    )
