"""The local sentence embedder, on the real model and tokenizer (no mocks)."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from codara.errors import ConfigError
from codara.models import Embedder
from codara.models._embedding import (
    EMBEDDING_DIM,
    MODEL_SHA256,
    TOKENIZER_SHA256,
    default_model_path,
    default_tokenizer_path,
    sha256_file,
)

SENTENCES = [
    "I am still waiting on my card?",
    "Hi",
    "What can I do if my card still hasn't arrived after 2 weeks? It has been ages and the "
    "tracking page says nothing at all about where it is or when it will be delivered.",
    "How do I change my PIN?",
    "",
    "Why was I charged twice for the same coffee this morning?",
    "exchange rate",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.shared()


def test_pinned_files_are_the_shipped_ones() -> None:
    assert sha256_file(default_model_path()) == MODEL_SHA256
    assert sha256_file(default_tokenizer_path()) == TOKENIZER_SHA256
    notice = default_tokenizer_path().parent / "NOTICE.md"
    assert "Apache" in notice.read_text(encoding="utf-8")


def test_embeddings_are_float32_unit_vectors(embedder: Embedder) -> None:
    vectors = embedder.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), EMBEDDING_DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.model_id == f"all-MiniLM-L6-v2-int8@{MODEL_SHA256[:12]}"


def test_order_is_preserved_across_length_sorted_batches(embedder: Embedder) -> None:
    batched = embedder.embed(SENTENCES, batch_size=3)
    one_by_one = np.vstack([embedder.embed([s]) for s in SENTENCES])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    reversed_order = embedder.embed(SENTENCES[::-1], batch_size=2)
    np.testing.assert_allclose(reversed_order[::-1], batched, atol=1e-4)


def test_similar_sentences_are_closer_than_unrelated_ones(embedder: Embedder) -> None:
    a, b, c = embedder.embed(
        [
            "My new card still has not arrived.",
            "I am waiting for my card to be delivered.",
            "What is the exchange rate for euros?",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.2
    assert float(a @ b) > float(b @ c) + 0.2


def test_long_text_is_truncated_not_rejected(embedder: Embedder) -> None:
    long_text = "my card was declined at the shop " * 200  # ~1,400 tokens
    short = "my card was declined at the shop " * 40  # ~280 tokens, past the limit too
    vectors = embedder.embed([long_text, short])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-4)


def test_empty_input_and_bad_arguments(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)
    with pytest.raises(TypeError, match="not one string"):
        embedder.embed("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embedder.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        embedder.embed(["ok"], batch_size=0)


def test_progress_reports_every_batch(embedder: Embedder) -> None:
    calls: list[tuple[int, int]] = []
    embedder.embed(
        SENTENCES, batch_size=3, on_progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(0, 7), (3, 7), (6, 7), (7, 7)]


def test_tampered_tokenizer_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    copy = tmp_path / "tokenizer.json"
    shutil.copyfile(default_tokenizer_path(), copy)
    Embedder(tokenizer_path=copy).load()  # an unmodified copy is fine
    copy.write_bytes(copy.read_bytes().replace(b'"[UNK]"', b'"[UNKNOWN]"', 1))
    with pytest.raises(ConfigError, match=r"tokenizer .* is not the pinned file: sha256 is") as err:
        Embedder(tokenizer_path=copy).embed(["hello"])
    assert TOKENIZER_SHA256 in str(err.value)
    assert err.value.hint is not None


def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the embedding model"):
        Embedder(model_path=tmp_path / "nowhere.onnx").load()


def test_concurrent_first_use_loads_once_and_agrees() -> None:
    fresh = Embedder(threads=1)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(fresh.embed(SENTENCES[:3]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert fresh.texts_embedded == 12


def test_embed_cached_reuses_and_rebuilds(
    embedder: Embedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts = SENTENCES[:4]
    first = embedder.embed_cached(texts, tmp_path)
    (cache_file,) = tmp_path.glob("embeddings-*.npy")
    assert embedder.cache_key(texts) in cache_file.name
    before = embedder.texts_embedded
    np.testing.assert_array_equal(embedder.embed_cached(texts, tmp_path), first)
    assert embedder.texts_embedded == before  # a hit runs nothing through the model

    cache_file.write_bytes(b"\x93NUMPY garbage")
    caplog.set_level(logging.WARNING, logger="codara.models._embedding")
    rebuilt = embedder.embed_cached(texts, tmp_path)
    assert "ignoring unusable embedding cache" in caplog.text
    assert embedder.texts_embedded == before + len(texts)
    np.testing.assert_array_equal(rebuilt, first)
    np.testing.assert_array_equal(np.load(cache_file), first)  # the file was rewritten
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind

    cache_file.write_bytes(b"")  # a zero-byte file (np.load raises EOFError on it)
    np.testing.assert_array_equal(embedder.embed_cached(texts, tmp_path), first)
    np.save(cache_file, first[:2])  # a valid array of the wrong shape
    np.testing.assert_array_equal(embedder.embed_cached(texts, tmp_path), first)
    assert caplog.text.count("ignoring unusable embedding cache") == 3

    embedder.embed_cached([*texts, "one more"], tmp_path)
    assert len(list(tmp_path.glob("embeddings-*.npy"))) == 2  # other data, other key
