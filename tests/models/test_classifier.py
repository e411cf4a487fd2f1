"""The embedding classifier on a real slice of BANKING77 (real model, no mocks)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from codara.errors import ConfigError, InputError
from codara.models import Embedder, EmbeddingClassifier, Prediction, pick_threshold

_VENDORED = Path(__file__).parents[2] / "examples/support_triage/data/banking77_train.csv"
BANKING77 = Path(os.environ.get("CODARA_BANKING77_CSV", _VENDORED))
# Ten intents, several of them easy to confuse (arrival vs delivery estimate, pending vs
# declined payment), 30 training and 20 held-out messages each.
INTENTS = (
    "card_arrival",
    "card_delivery_estimate",
    "change_pin",
    "declined_card_payment",
    "exchange_rate",
    "lost_or_stolen_card",
    "pending_card_payment",
    "request_refund",
    "top_up_failed",
    "transfer_not_received_by_recipient",
)
N_TRAIN, N_TEST = 30, 20
# Measured 0.965 on this split (l2 from 1e-3 to 1e-2); the floor leaves room for noise only.
ACCURACY_FLOOR = 0.9


@dataclass(frozen=True)
class Split:
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    train_x: np.ndarray
    test_x: np.ndarray


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.shared()


@pytest.fixture(scope="module")
def split(embedder: Embedder) -> Split:
    if not BANKING77.exists():
        pytest.skip(f"BANKING77 not found at {BANKING77} (set CODARA_BANKING77_CSV)")
    by_intent: dict[str, list[str]] = {intent: [] for intent in INTENTS}
    with BANKING77.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in by_intent:
                by_intent[row["category"]].append(row["text"])
    rng = np.random.default_rng(77)
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for intent, texts in by_intent.items():
        picked = rng.permutation(len(texts))[: N_TRAIN + N_TEST]
        train += [(texts[i], intent) for i in picked[:N_TRAIN]]
        test += [(texts[i], intent) for i in picked[N_TRAIN:]]
    return Split(
        train_texts=[t for t, _ in train],
        train_labels=[label for _, label in train],
        test_texts=[t for t, _ in test],
        test_labels=[label for _, label in test],
        train_x=embedder.embed([t for t, _ in train]),
        test_x=embedder.embed([t for t, _ in test]),
    )


@pytest.fixture(scope="module")
def fitted(embedder: Embedder, split: Split) -> EmbeddingClassifier:
    return EmbeddingClassifier(embedder).fit_embeddings(split.train_x, split.train_labels)


def test_held_out_accuracy(fitted: EmbeddingClassifier, split: Split) -> None:
    assert fitted.labels == tuple(sorted(INTENTS))
    predictions = fitted.predict_embeddings(split.test_x)
    accuracy = np.mean([p.label == y for p, y in zip(predictions, split.test_labels, strict=True)])
    assert accuracy >= ACCURACY_FLOOR


def test_predictions_carry_confidence_and_alternatives(
    fitted: EmbeddingClassifier, split: Split
) -> None:
    texts = split.test_texts[:5]
    from_text = fitted.predict(texts)
    from_vectors = fitted.predict_embeddings(split.test_x[:5])
    assert from_text == from_vectors
    probs = fitted.predict_proba_embeddings(split.test_x[:5])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    for p, row in zip(from_text, probs, strict=True):
        assert isinstance(p, Prediction)
        assert 0.0 < p.confidence <= 1.0
        assert p.confidence == pytest.approx(row.max())
        assert len(p.alternatives) == 3
        assert p.alternatives[0] == (p.label, p.confidence)
        scores = [score for _, score in p.alternatives]
        assert scores == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="frozen"):
        from_text[0].label = "other"  # type: ignore[misc]


def test_fit_from_texts_is_deterministic(
    embedder: Embedder, fitted: EmbeddingClassifier, split: Split
) -> None:
    labels = split.train_labels[::5]  # six of each intent
    from_texts = EmbeddingClassifier(embedder).fit(split.train_texts[::5], labels)
    from_vectors = EmbeddingClassifier(embedder).fit_embeddings(split.train_x[::5], labels)
    np.testing.assert_allclose(
        from_texts.predict_proba_embeddings(split.test_x),
        from_vectors.predict_proba_embeddings(split.test_x),
        atol=1e-6,
    )
    twice = EmbeddingClassifier(embedder).fit_embeddings(split.train_x, split.train_labels)
    np.testing.assert_array_equal(
        twice.predict_proba_embeddings(split.test_x),
        fitted.predict_proba_embeddings(split.test_x),
    )


def test_save_load_round_trip(
    embedder: Embedder, fitted: EmbeddingClassifier, split: Split, tmp_path: Path
) -> None:
    fitted.save(tmp_path / "clf")
    loaded = EmbeddingClassifier.load(tmp_path / "clf", embedder=embedder)
    assert loaded.labels == fitted.labels
    np.testing.assert_array_equal(
        loaded.predict_proba_embeddings(split.test_x),
        fitted.predict_proba_embeddings(split.test_x),
    )
    assert loaded.predict_embeddings(split.test_x) == fitted.predict_embeddings(split.test_x)
    meta = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert meta["model_id"] == embedder.model_id


def test_load_refuses_damaged_or_foreign_files(
    embedder: Embedder, fitted: EmbeddingClassifier, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="cannot read a saved classifier"):
        EmbeddingClassifier.load(tmp_path / "missing", embedder=embedder)
    fitted.save(tmp_path / "clf")
    meta_path = tmp_path / "clf" / "classifier.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "model_id": "some-other-model@000"}))
    with pytest.raises(ConfigError, match="trained on embeddings 'some-other-model@000'"):
        EmbeddingClassifier.load(tmp_path / "clf", embedder=embedder)
    meta_path.write_text(json.dumps(meta))
    weights = tmp_path / "clf" / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(InputError, match=r"does not match its classifier\.json"):
        EmbeddingClassifier.load(tmp_path / "clf", embedder=embedder)


def test_fit_cached_hits_without_recomputing_and_rebuilds_when_corrupt(
    embedder: Embedder, split: Split, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts, labels = split.train_texts[::5], split.train_labels[::5]
    first = EmbeddingClassifier(embedder).fit_cached(texts, labels, tmp_path)
    expected = first.predict_proba_embeddings(split.test_x)
    (entry,) = tmp_path.glob("classifier-*")
    assert len(list(tmp_path.glob("embeddings-*.npy"))) == 1

    before = embedder.texts_embedded
    hit = EmbeddingClassifier(embedder).fit_cached(texts, labels, tmp_path)
    assert embedder.texts_embedded == before
    np.testing.assert_array_equal(hit.predict_proba_embeddings(split.test_x), expected)

    (entry / "weights.npz").write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="codara.models._classifier"):
        rebuilt = EmbeddingClassifier(embedder).fit_cached(texts, labels, tmp_path)
    assert "ignoring unusable classifier cache" in caplog.text
    assert embedder.texts_embedded == before  # the embeddings were still cached
    np.testing.assert_array_equal(rebuilt.predict_proba_embeddings(split.test_x), expected)
    assert EmbeddingClassifier.load(entry, embedder=embedder).labels == rebuilt.labels

    relabelled = [*labels[:-1], labels[0]]
    EmbeddingClassifier(embedder).fit_cached(texts, relabelled, tmp_path)
    assert len(list(tmp_path.glob("classifier-*"))) == 2  # other labels, other key


def test_bad_training_data_and_unfitted_use(embedder: Embedder, split: Split) -> None:
    clf = EmbeddingClassifier(embedder)
    with pytest.raises(RuntimeError, match="not fitted"):
        clf.predict_embeddings(split.test_x)
    with pytest.raises(InputError, match="at least two distinct labels"):
        clf.fit_embeddings(split.train_x[:5], ["a"] * 5)
    with pytest.raises(InputError, match="5 embeddings but 4 labels"):
        clf.fit_embeddings(split.train_x[:5], ["a", "b", "a", "b"])
    with pytest.raises(InputError, match="2 texts but 1 labels"):
        clf.fit(["x", "y"], ["a"])
    with pytest.raises(InputError, match="shape"):
        clf.fit_embeddings(np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="l2"):
        EmbeddingClassifier(embedder, l2=0.0)


def test_threshold_on_real_predictions_meets_its_target(
    fitted: EmbeddingClassifier, split: Split
) -> None:
    predictions = fitted.predict_embeddings(split.test_x)
    conf = np.array([p.confidence for p in predictions])
    ok = np.array([p.label == y for p, y in zip(predictions, split.test_labels, strict=True)])
    threshold = pick_threshold(conf, ok, 0.98)
    assert not math.isnan(threshold)
    automated = conf >= threshold
    if automated.any():
        assert ok[automated].mean() >= 0.98
