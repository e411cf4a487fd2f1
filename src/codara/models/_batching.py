"""Micro-batching: many concurrent runs' single-item model calls become one batched call.

A worker executes many runs at once; each asks the model about one ticket. Encoders are
several times faster on a sorted batch than one text at a time, so calls that arrive within
``max_wait`` seconds are gathered (up to ``max_batch``) and handed to ``fn`` together, in a
thread so the event loop keeps serving other runs meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["MicroBatcher"]

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        fn: Callable[[Sequence[In]], Sequence[Out]],
        *,
        max_batch: int = 32,
        max_wait: float = 0.004,
    ) -> None:
        self._fn = fn
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._flusher: asyncio.TimerHandle | None = None
        self._busy = asyncio.Lock()
        self.batches = 0

    async def __call__(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._flusher is None:
            self._flusher = loop.call_later(self._max_wait, self._flush)
        return await future

    def _flush(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        batch, self._pending = self._pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        async with self._busy:  # one model call at a time: it uses every core already
            self.batches += 1
            try:
                results = await asyncio.to_thread(self._fn, [item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
        if len(results) != len(batch):
            err = RuntimeError(f"batched call returned {len(results)} results for {len(batch)}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
