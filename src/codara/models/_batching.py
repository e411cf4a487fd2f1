"""Batching: many concurrent runs' one-text model calls become few padded batches.

A worker executes many runs at once and each asks the model about one text. An encoder pays
for every position of its padded input: a batch costs (texts x its longest text) token
positions, however short the others are. So :class:`TokenBatcher` does not cut batches by
count in arrival order; it keeps every waiting text in one pool and, each time the model is
free, runs the texts of most similar length around the oldest one, up to a token budget:

* A text that reaches an idle model waits ``max_wait`` seconds (or until the pool holds a
  full budget) for company; while the model runs, the pool just fills, so under load there
  is no waiting at all.
* The next batch is the oldest waiting text plus its neighbours in length order, shorter
  ones first (they add no padding), while ``texts x longest <= max_tokens`` and
  ``texts <= max_texts``. The oldest text always goes next: nothing starves.
* One model call at a time, in a thread, so the event loop keeps serving other runs; that
  thread takes the next batch itself as soon as a call ends (a loop busy with journal
  writes does not leave the model idle), and each batch's results are handed back through
  the loop as soon as that batch is done.
* A batch that fails is split in halves and retried until the failing text is alone, so only
  its caller gets the error. A caller that is cancelled leaves the pool.

:class:`TextBatcher` is the front for texts: it tokenizes a text and hands the ids to a
:class:`TokenBatcher` over :meth:`Embedder.embed_tokens`, then turns each batch's vectors into
results (``then``, e.g. :meth:`EmbeddingClassifier.predict_embeddings`).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from codara.config import EmbeddingSettings
from codara.models._embedding import Embedder, FloatMatrix

__all__ = ["BatchStats", "TextBatcher", "TokenBatcher"]

Out = TypeVar("Out")
Tokens = Sequence[int]


@dataclass
class BatchStats:
    """What a batcher has done so far."""

    calls: int = 0
    """Batches handed to the model (a retry after a failure counts again)."""
    items: int = 0
    """Texts answered (with a result or an error)."""
    tokens: int = 0
    """Real tokens of the texts in the calls."""
    padded: int = 0
    """Token positions the calls computed: per call, texts x its longest text."""
    largest: int = 0
    """Most texts in one call."""
    busy: float = 0.0
    """Seconds spent in the model calls."""

    @property
    def padding_share(self) -> float:
        """Fraction of the computed positions that were padding."""
        return 1.0 - self.tokens / self.padded if self.padded else 0.0


@dataclass(eq=False)
class _Request:
    seq: int
    tokens: Tokens
    future: asyncio.Future[Any]
    length: int = field(init=False)

    def __post_init__(self) -> None:
        self.length = len(self.tokens)


class TokenBatcher(Generic[Out]):
    """Answers one token sequence per call; ``fn`` gets batches of similar length.

    ``fn(batch)`` returns one result per token sequence, in order. It runs in one thread, one
    call at a time (the model uses the cores it has already), and that thread takes the next
    batch itself when a call ends: the model does not wait for a busy event loop between
    calls. Results go back to the callers through the loop.
    """

    def __init__(
        self,
        fn: Callable[[list[Tokens]], Sequence[Out]],
        *,
        max_tokens: int = 256,
        max_texts: int = 256,
        max_wait: float = 0.002,
    ) -> None:
        if max_tokens < 1 or max_texts < 1 or max_wait < 0:
            raise ValueError(
                "need max_tokens >= 1, max_texts >= 1 and max_wait >= 0, got "
                f"{max_tokens}, {max_texts}, {max_wait}"
            )
        self._fn = fn
        self.max_tokens = max_tokens
        self.max_texts = max_texts
        self.max_wait = max_wait
        self.stats = BatchStats()
        # The pool, sorted by (length, seq); the oldest is the one with the smallest seq.
        # Shared by the loop (adds, cancels) and the model thread (takes): under _lock.
        self._pool: list[tuple[int, int, _Request]] = []
        self._pool_tokens = 0
        self._lock = threading.Lock()
        self._serving = False  # a model thread is running or about to: under _lock
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._full: asyncio.Event | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        # its own thread, named, so the model does not hold a slot of the loop's default pool
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codara-model")

    @property
    def waiting(self) -> int:
        """Texts in the pool, not yet handed to the model."""
        return len(self._pool)

    async def __call__(self, tokens: Tokens) -> Out:
        if not tokens:
            raise ValueError("an empty token sequence has nothing to embed")
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is not loop:
                if self._pool or self._serving:
                    raise RuntimeError("a TokenBatcher serves one event loop at a time")
                self._loop, self._full = loop, asyncio.Event()
            request = _Request(next(self._seq), tokens, loop.create_future())
            bisect.insort(self._pool, (request.length, request.seq, request))
            self._pool_tokens += request.length
            full = self._pool_tokens >= self.max_tokens
            start = not self._serving
            self._serving = True
        assert self._full is not None
        if full:
            self._full.set()
        if start:
            task = asyncio.ensure_future(self._start(loop, self._full))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)
        try:
            result: Out = await request.future
        except asyncio.CancelledError:
            self._forget(request)
            raise
        return result

    def _forget(self, request: _Request) -> None:
        with self._lock:
            i = bisect.bisect_left(self._pool, (request.length, request.seq))
            if i < len(self._pool) and self._pool[i][2] is request:
                del self._pool[i]
                self._pool_tokens -= request.length

    async def _start(self, loop: asyncio.AbstractEventLoop, full: asyncio.Event) -> None:
        """The model was idle: wait ``max_wait`` for company (or a full budget), then serve."""
        if self.max_wait > 0 and not full.is_set():
            try:
                await asyncio.wait_for(full.wait(), self.max_wait)
            except TimeoutError:
                pass
        full.clear()
        try:
            await loop.run_in_executor(self._executor, self._serve, loop)
        except BaseException:
            with self._lock:  # the loop is going away: nobody will be answered
                self._serving = False
                stranded = [entry[2] for entry in self._pool]
                self._pool.clear()
                self._pool_tokens = 0
            for request in stranded:
                if not request.future.done():
                    request.future.set_exception(RuntimeError("the batcher was stopped"))
            raise

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        """The model thread: run batches until the pool is empty."""
        while True:
            with self._lock:
                if not self._pool:
                    self._serving = False
                    return
                batch = self._take()
            outcomes = self._answer([r.tokens for r in batch])
            try:
                loop.call_soon_threadsafe(_deliver, batch, outcomes)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                with self._lock:
                    self._serving = False
                return

    def _take(self) -> list[_Request]:
        """The oldest waiting text and its nearest neighbours in length, within the budget."""
        pool = self._pool
        anchor = min(range(len(pool)), key=lambda i: pool[i][1])
        lo = hi = anchor
        width = pool[anchor][0]
        while hi - lo + 1 < self.max_texts:
            count = hi - lo + 2
            if lo > 0 and count * width <= self.max_tokens:  # shorter: adds no padding
                lo -= 1
            elif hi + 1 < len(pool) and count * pool[hi + 1][0] <= self.max_tokens:
                hi += 1
                width = pool[hi][0]
            else:
                break
        taken = [entry[2] for entry in pool[lo : hi + 1]]
        del pool[lo : hi + 1]
        self._pool_tokens -= sum(r.length for r in taken)
        return taken

    def _answer(self, batch: list[Tokens]) -> list[tuple[bool, Any]]:
        """Per text (True, result) or (False, exception); a failing batch is bisected so that
        only the text that fails gets the error. Runs in the model's thread."""
        self.stats.calls += 1
        self.stats.tokens += sum(len(t) for t in batch)
        self.stats.padded += len(batch) * max(len(t) for t in batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        started = time.perf_counter()
        try:
            results = self._fn(batch)
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batched call returned {len(results)} results for {len(batch)} texts"
                )
        except Exception as exc:
            self.stats.busy += time.perf_counter() - started
            if len(batch) == 1:
                self.stats.items += 1
                return [(False, exc)]
            half = len(batch) // 2
            return self._answer(batch[:half]) + self._answer(batch[half:])
        self.stats.busy += time.perf_counter() - started
        self.stats.items += len(batch)
        return [(True, r) for r in results]


def _deliver(batch: list[_Request], outcomes: list[tuple[bool, Any]]) -> None:
    for request, (ok, value) in zip(batch, outcomes, strict=True):
        if request.future.done():  # its caller was cancelled meanwhile
            continue
        if ok:
            request.future.set_result(value)
        else:
            request.future.set_exception(value)


class TextBatcher(Generic[Out]):
    """Answers one text per call; texts from concurrent callers share model calls.

    Each text is tokenized as it arrives, batched by :class:`TokenBatcher` over
    ``embedder.embed_tokens``, and each batch's ``(n, 384)`` vectors become its ``n``
    results through ``then`` (in the model's thread, so numpy work stays off the loop).
    """

    def __init__(
        self,
        embedder: Embedder,
        then: Callable[[FloatMatrix], Sequence[Out]],
        settings: EmbeddingSettings | None = None,
    ) -> None:
        s = settings if settings is not None else EmbeddingSettings()
        self.embedder = embedder
        self._then = then
        self.by_tokens: TokenBatcher[Out] = TokenBatcher(
            self._run,
            max_tokens=s.batch_tokens,
            max_texts=s.batch_texts,
            max_wait=s.batch_wait,
        )

    @property
    def stats(self) -> BatchStats:
        return self.by_tokens.stats

    async def __call__(self, text: str) -> Out:
        if not self.embedder.is_loaded:  # loading takes seconds: not on the event loop
            await asyncio.to_thread(self.embedder.load)
        return await self.by_tokens(self.embedder.encode(text))

    def _run(self, batch: list[Tokens]) -> Sequence[Out]:
        return self._then(self.embedder.embed_tokens(batch))
