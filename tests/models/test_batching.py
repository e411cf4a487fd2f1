"""Batching of concurrent one-text model calls, on the real model and tokenizer (no mocks):
batches are cut by token budget around texts of similar length, every caller gets its own
vector, a failing text fails only its caller, and many runs share few model calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import numpy as np
import pytest

import codara
from codara.config import EmbeddingSettings
from codara.models import Embedder, TextBatcher, TokenBatcher
from codara.models._embedding import MAX_TOKENS, FloatMatrix

SHORT = ["Hi", "PIN?", "exchange rate", "top up", "card lost", "refund please", "fees?", "help"]
LONG = [
    "What can I do if my card still hasn't arrived after two weeks? It has been ages and the "
    "tracking page says nothing at all about where it is or when it will be delivered.",
    "I was charged twice for the same coffee this morning and the second payment is still "
    "pending in the app; can you please reverse it and tell me why this keeps happening?",
    "My transfer to my landlord has been pending for three days now and he says he has not "
    "received anything, so could you check what is wrong and when the money will arrive?",
    "Why did the exchange rate I got for my payment abroad differ so much from the one shown "
    "in the app when I checked it just before paying in the shop in Madrid last weekend?",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    e = Embedder.shared()
    e.load()
    return e


def _recording(embedder: Embedder, calls: list[list[int]]) -> TokenBatcher[np.ndarray]:
    """A batcher over the real model that notes the token lengths of every call."""

    def fn(batch: list[Sequence[int]]) -> Sequence[np.ndarray]:
        calls.append([len(t) for t in batch])
        return list(embedder.embed_tokens(batch))

    return TokenBatcher(fn, max_tokens=128, max_texts=64, max_wait=0.05)


async def test_batches_follow_the_token_budget_and_group_similar_lengths(
    embedder: Embedder,
) -> None:
    calls: list[list[int]] = []
    batcher = _recording(embedder, calls)
    texts = [t for pair in zip(SHORT, LONG * 2, strict=True) for t in pair]  # interleaved
    tokens = embedder.tokenize(texts)
    short_max = max(len(embedder.encode(t)) for t in SHORT)
    long_min = min(len(embedder.encode(t)) for t in LONG)
    assert short_max * 4 < long_min  # the two groups are far apart

    await asyncio.gather(*(batcher(t) for t in tokens))

    assert sorted(n for call in calls for n in call) == sorted(len(t) for t in tokens)
    for call in calls:
        assert len(call) == 1 or len(call) * max(call) <= 128, call
        mixed = max(call) >= long_min and min(call) <= short_max
        assert not mixed, f"a short text was padded to a long one: {call}"
    # all 8 short texts fit one call of the budget; each long pair another
    assert any(len(call) == len(SHORT) for call in calls), calls
    assert batcher.stats.padding_share < 0.5
    assert batcher.stats.calls == len(calls) < len(texts)


async def test_every_caller_gets_its_own_vector(embedder: Embedder) -> None:
    texts = SHORT + LONG + [f"How do I order card number {i}?" for i in range(20)]
    batcher = TextBatcher(embedder, list, EmbeddingSettings(batch_tokens=256, batch_wait=0.05))
    got = await asyncio.gather(*(batcher(t) for t in texts))
    assert batcher.stats.calls < len(texts)  # they really were batched
    alone = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(np.vstack(got), alone, atol=1e-4)
    # and each is the vector of its own text, not a neighbour's
    assert all(int(np.argmax(alone @ v)) == i for i, v in enumerate(got))


async def test_a_failing_text_fails_only_its_caller(embedder: Embedder) -> None:
    calls: list[list[int]] = []
    batcher = _recording(embedder, calls)
    good = embedder.tokenize(SHORT)
    too_long = [101] + [1000] * MAX_TOKENS + [102]  # the model refuses more than 256 tokens
    results = await asyncio.gather(
        *(batcher(t) for t in [*good[:4], too_long, *good[4:]]), return_exceptions=True
    )
    assert isinstance(results[4], ValueError)
    assert "tokens" in str(results[4])
    vectors = [r for i, r in enumerate(results) if i != 4 and isinstance(r, np.ndarray)]
    assert len(vectors) == len(SHORT)
    np.testing.assert_allclose(np.vstack(vectors), embedder.embed(SHORT), atol=1e-4)


async def test_a_text_that_is_not_a_string_fails_at_once(embedder: Embedder) -> None:
    batcher = TextBatcher(embedder, list)
    ok, bad = await asyncio.gather(batcher("Hi"), batcher(42), return_exceptions=True)  # type: ignore[arg-type]
    assert isinstance(bad, TypeError)
    assert isinstance(ok, np.ndarray)
    assert ok.shape == (384,)


async def test_a_cancelled_caller_leaves_the_pool(embedder: Embedder) -> None:
    calls: list[list[int]] = []
    batcher = _recording(embedder, calls)
    tokens = embedder.tokenize(SHORT)
    waiting = asyncio.ensure_future(batcher(tokens[0]))
    await asyncio.sleep(0)
    assert batcher.waiting == 1
    waiting.cancel()
    await asyncio.sleep(0)
    assert batcher.waiting == 0
    rest = await asyncio.gather(*(batcher(t) for t in tokens[1:]))
    assert len(rest) == len(SHORT) - 1
    assert sorted(n for call in calls for n in call) == sorted(len(t) for t in tokens[1:])


async def test_concurrent_runs_share_model_calls(db_url: str, embedder: Embedder) -> None:
    texts = [f"Ticket {i}: why was my card payment number {i} declined?" for i in range(48)]
    texts += [LONG[i % len(LONG)] + f" (case {i})" for i in range(16)]
    batcher: TextBatcher[FloatMatrix] = TextBatcher(embedder, lambda m: list(m))
    app = codara.App(database_url=db_url)

    async def embed(text: str) -> list[float]:
        vector = await batcher(text)
        return [float(x) for x in vector]

    @app.workflow(name="embed", version="1")
    async def flow(ctx: codara.Context, text: str) -> list[float]:
        vector: list[float] = await ctx.step("embed", embed, text)
        return vector

    before = embedder.model_calls
    async with app:
        ids = await app.start_runs("embed", texts)
        assert await app.work(concurrency=64, until_idle=True) == len(texts)
        runs = [await app.store.get_run(i) for i in ids]
    calls = embedder.model_calls - before
    assert calls == batcher.stats.calls
    assert calls <= len(texts) // 4, f"{calls} model calls for {len(texts)} concurrent runs"
    assert batcher.stats.largest > 1
    assert all(r is not None and r.status == "completed" and r.output for r in runs)
    vectors = np.array([json.loads(r.output) for r in runs if r and r.output], np.float32)
    np.testing.assert_allclose(vectors, embedder.embed(texts), atol=1e-4)
