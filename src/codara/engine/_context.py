"""The workflow context: durable steps, transactions, timers and waits for signals.

Every call on the context is an *operation* with a number assigned in call order (``op``).
Its result is one journal row (two for a wait: the deadline, then the signal or timeout),
written in the same statement that proves this worker still owns the run. When a run is
replayed after a crash, an operation whose row exists returns the journaled result without
running again.

Waits and sleeps do not hold the worker: a blocked operation parks its branch, and once no
operation of the run is doing work any more, the executor stores the run's wake-up time and
drops it from memory (see ``_executor``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from types import CoroutineType
from typing import TYPE_CHECKING, Any, TypeVar

from codara.engine._codec import decode, dump_error, dumps, dumps_lenient, return_adapter
from codara.errors import NonDeterminismError, StepFailedError, WaitTimeoutError
from codara.store import FencedError, JournalRecord, Store, Tx
from codara.trace import ChainKey, row_hash

if TYPE_CHECKING:
    from codara.engine._retry import RetryPolicy

__all__ = ["Context"]

_PLAIN_RESULTS = frozenset({int, float, str, bool, type(None), dict, list, tuple})

T = TypeVar("T")


class Abort(BaseException):
    """Unwinds a workflow that must stop running here (lease lost, cancelled, parked).

    A BaseException, so that workflow code catching ``Exception`` cannot swallow it.
    """


@dataclass(slots=True)
class Block:
    """A branch parked on a durable wait or a timer."""

    deadline: float | None
    signal: str | None


class Context:
    """Handed to every workflow function as its first argument."""

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
        key: ChainKey,
    ) -> None:
        self._key = key  # hashes journal rows: HMAC with CODARA_AUDIT_KEY, or SHA-256
        self.run_id = run_id
        self.workflow = workflow
        self.version = version
        self._store = store
        self._token = token
        self.signal_version = signal_version
        self._clock = clock
        self._retry = default_retry
        self._by_op: dict[int, list[JournalRecord]] = {}
        for row in journal:
            self._by_op.setdefault(row.op, []).append(row)
        self._replayed_ops = len(self._by_op)
        self._seq = len(journal)
        self._prev = journal[-1].hash if journal else genesis
        self._next_op = 0
        self._active = 0
        self.blocks: list[Block] = []
        self.quiesced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closing = False
        self._wlock = asyncio.Lock()  # rows are numbered and written one at a time, in order

    # -- inspection ------------------------------------------------------------------------
    def now(self) -> float:
        """The app's clock. Not journaled: use it inside steps, not to choose a branch."""
        return self._clock()

    @property
    def is_replaying(self) -> bool:
        """True while the run re-reads its journal after a restart."""
        return self._next_op < self._replayed_ops

    def _take_op(self) -> tuple[int, list[JournalRecord] | None]:
        if self.closing:
            raise Abort
        op = self._next_op
        self._next_op = op + 1
        return op, self._by_op.get(op)

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
    ) -> JournalRecord:
        seq = self._seq
        prev = self._prev
        finished = self._clock()
        h = row_hash(
            prev, self.run_id, seq, op, kind, name, status, input, output, error,
            started, finished, attempts, key=self._key,
        )  # fmt: skip
        self._seq = seq + 1
        self._prev = h
        return JournalRecord(
            self.run_id, seq, op, kind, name, status, input, output, error,
            started, finished, attempts, prev, h,
        )  # fmt: skip

    async def _append(self, make: Callable[[], JournalRecord]) -> None:
        try:
            async with self._wlock:
                await self._store.append(self.run_id, self._token, make())
        except FencedError:
            self.closing = True
            raise Abort from None

    def _done_working(self) -> None:
        self._active -= 1
        if self.blocks and self._active == 0:
            asyncio.get_running_loop().call_soon(self._check_quiet)

    def _check_quiet(self) -> None:
        if self._active == 0 and self.blocks and not self.quiesced.done():
            self.quiesced.set_result(None)

    async def _park(self, block: Block) -> None:
        self.blocks.append(block)
        if self._active == 0:
            asyncio.get_running_loop().call_soon(self._check_quiet)
        await asyncio.get_running_loop().create_future()  # cancelled by the executor

    # -- the operations --------------------------------------------------------------------
    async def step(
        self,
        name: str,
        fn: Callable[..., T | Awaitable[T]],
        /,
        *args: Any,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` once for this run and journal its result.

        On replay the journaled result is returned (re-validated into ``fn``'s declared return
        type) and ``fn`` is not called. A step that raises is retried by ``retry`` (default:
        the app's policy); when it gives up, the error is journaled and
        :class:`~codara.errors.StepFailedError` raised, on replay too. ``fn`` may be sync or
        async; a sync ``fn`` runs on the event loop, so wrap blocking I/O in
        ``asyncio.to_thread``.
        """
        op, rows = self._take_op()
        if rows is not None:
            return self._replay(rows[0], "step", name, fn)  # type: ignore[no-any-return]
        self._active += 1
        try:
            started = self._clock()
            policy = retry or self._retry
            attempt = 1
            while True:
                try:
                    result = fn(*args, **kwargs)
                    if type(result) is CoroutineType or (
                        type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result)
                    ):
                        result = await result
                    break
                except Exception as exc:
                    if not policy.should_retry(exc, attempt):
                        await self._append(
                            partial(
                                self._record,
                                op,
                                "step",
                                name,
                                "error",
                                _args_json(args, kwargs),
                                None,
                                dump_error(exc),
                                started,
                                attempt,
                            )
                        )
                        raise _step_failed(name, exc) from exc
                    await asyncio.sleep(policy.delay(attempt))
                    attempt += 1
            await self._append(
                partial(
                    self._record,
                    op,
                    "step",
                    name,
                    "ok",
                    _args_json(args, kwargs),
                    dumps(result),
                    None,
                    started,
                    attempt,
                )
            )
            return result  # type: ignore[return-value]
        finally:
            self._done_working()

    async def transaction(
        self, name: str, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:
        """Run ``await fn(tx, *args, **kwargs)`` in the store's database transaction.

        Its writes (through ``tx.execute``) commit together with the journal row, so they
        happen exactly once even if the worker is killed at any moment. Use it for effects on
        tables in the same database; for anything else use :meth:`step` with an idempotency
        key.
        """
        op, rows = self._take_op()
        if rows is not None:
            return self._replay(rows[0], "transaction", name, fn)  # type: ignore[no-any-return]
        self._active += 1
        try:
            started = self._clock()
            args_json = _args_json(args, kwargs)

            async def body(tx: Tx) -> Any:
                return await fn(tx, *args, **kwargs)

            built: list[JournalRecord] = []

            def build(result: Any) -> JournalRecord:
                record = self._record(
                    op, "transaction", name, "ok", args_json, dumps(result), None, started, 1
                )
                built.append(record)
                return record

            try:
                async with self._wlock:
                    result, _ = await self._store.transaction(self.run_id, self._token, body, build)
            except FencedError:
                self.closing = True
                raise Abort from None
            except Exception as exc:
                if built:  # its row was numbered, then rolled back: nothing came after it
                    self._seq, self._prev = built[0].seq, built[0].prev_hash
                await self._append(
                    partial(
                        self._record,
                        op,
                        "transaction",
                        name,
                        "error",
                        args_json,
                        None,
                        dump_error(exc),
                        started,
                        1,
                    )
                )
                raise _step_failed(name, exc) from exc
            return result  # type: ignore[no-any-return]
        finally:
            self._done_working()

    async def sleep(self, seconds: float, name: str = "sleep") -> None:
        """Sleep durably: the run is parked in the database and woken after ``seconds``."""
        op, rows = self._take_op()
        if rows is None:
            wake = self._clock() + max(0.0, seconds)
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
                    self._clock(),
                    1,
                )
            )
        else:
            self._check(rows[0], "sleep", name)
            wake = float(decode(rows[0].output)["wake_at"])
        if self._clock() >= wake:
            return
        await self._park(Block(deadline=wake, signal=None))

    async def wait_for(self, signal: str, *, timeout: float | None = None) -> Any:
        """Wait durably for the signal ``signal`` sent to this run; return its payload.

        Raises :class:`~codara.errors.WaitTimeoutError` when ``timeout`` seconds pass first.
        The wait holds no thread and no memory: the run is parked in the database.
        """
        op, rows = self._take_op()
        if rows is None:
            deadline = None if timeout is None else self._clock() + max(0.0, timeout)
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
                    self._clock(),
                    1,
                )
            )
        else:
            self._check(rows[0], "wait", signal)
            if len(rows) > 1:
                return self._signal_result(rows[1], signal, timeout)
            deadline = decode(rows[0].output)["deadline"]
        started = self._clock()
        self._active += 1
        try:

            def build(payload: str | None) -> JournalRecord:
                return self._record(op, "signal", signal, "ok", None, payload, None, started, 1)

            try:
                async with self._wlock:
                    got = await self._store.consume_signal(
                        self.run_id, self._token, signal, self._seq, build
                    )
            except FencedError:
                self.closing = True
                raise Abort from None
            if got is not None:
                return decode(got.output)
            if deadline is not None and self._clock() >= deadline:
                err = dumps({"type": "WaitTimeoutError", "message": "timed out"})
                await self._append(
                    partial(
                        self._record, op, "signal", signal, "error", None, None, err, started, 1
                    )
                )
                raise WaitTimeoutError(signal, timeout)
        finally:
            self._done_working()
        await self._park(Block(deadline=deadline, signal=signal))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- replay ----------------------------------------------------------------------------
    def _check(self, row: JournalRecord, kind: str, name: str) -> None:
        if row.kind != kind or row.name != name:
            raise NonDeterminismError(
                f"run {self.run_id}: operation #{row.op} was {row.kind} {row.name!r} when the "
                f"run first executed, but the workflow now calls {kind} {name!r}",
                hint="workflow code changed in a way that breaks running runs: give the new "
                "code a new version, or make the change only for new runs",
            )

    def _replay(self, row: JournalRecord, kind: str, name: str, fn: Callable[..., Any]) -> Any:
        self._check(row, kind, name)
        if row.status != "ok":
            err = decode(row.error) or {}
            raise StepFailedError(
                name,
                str(err.get("type", "Error")),
                str(err.get("message", "")),
                non_retryable=bool(err.get("non_retryable")),
            )
        value = decode(row.output)
        adapter = return_adapter(fn)
        return value if adapter is None else adapter.validate_python(value)

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
