"""The trainer: more data does not make it worse, it converges, and says when it did not.

Synthetic data in the embedding's 384 dimensions: five classes around random centres, with
noise that makes them overlap, so that accuracy is below 1 and can move either way.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from codara.errors import InputError
from codara.models import Embedder, EmbeddingClassifier
from codara.models._embedding import EMBEDDING_DIM
from codara.models._training import train

CLASSES = ("a", "b", "c", "d", "e")


def _blobs(n_per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    centres = np.random.default_rng(0).normal(size=(len(CLASSES), EMBEDDING_DIM)) * 0.09
    rng = np.random.default_rng(seed)
    x = np.vstack([c + rng.normal(size=(n_per_class, EMBEDDING_DIM)) for c in centres])
    return x, [label for label in CLASSES for _ in range(n_per_class)]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.shared()  # not loaded: fitting on embeddings never runs the model


def _accuracy(clf: EmbeddingClassifier, x: np.ndarray, labels: list[str]) -> float:
    predicted = [p.label for p in clf.predict_embeddings(x)]
    return float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))


def test_more_training_data_does_not_lower_accuracy(embedder: Embedder) -> None:
    test_x, test_y = _blobs(400, seed=2)
    pool_x, pool_y = _blobs(800, seed=1)
    accuracies = []
    for n in (20, 100, 800):  # per class, each set inside the next
        keep = [i for i in range(len(pool_y)) if i % 800 < n]
        clf = EmbeddingClassifier(embedder).fit_embeddings(pool_x[keep], [pool_y[i] for i in keep])
        assert clf.converged
        accuracies.append(_accuracy(clf, test_x, test_y))
    assert 0.3 < accuracies[0] < 0.95  # the task is neither trivial nor hopeless
    assert accuracies[0] < accuracies[1] <= accuracies[2]


def test_training_reaches_the_optimum_and_is_deterministic() -> None:
    x, y = _blobs(100, seed=5)
    index = np.array([CLASSES.index(label) for label in y], dtype=np.int64)
    fitted = train(x, index, len(CLASSES), 3e-3, 300)
    assert fitted.converged
    assert fitted.iterations < 300
    assert fitted.gradient_ratio <= 1e-3
    tighter = train(x, index, len(CLASSES), 3e-3, 2000)
    np.testing.assert_array_equal(tighter.weights, fitted.weights)  # same path, same stop
    again = train(x.copy(), index.copy(), len(CLASSES), 3e-3, 300)
    np.testing.assert_array_equal(again.weights, fitted.weights)
    np.testing.assert_array_equal(again.bias, fitted.bias)


def test_a_fit_stopped_early_says_so(embedder: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    x, y = _blobs(50, seed=6)
    with caplog.at_level(logging.WARNING, logger="codara.models._classifier"):
        clf = EmbeddingClassifier(embedder, max_iter=2).fit_embeddings(x, y)
    assert clf.converged is False
    assert "did not converge in 2 iterations" in caplog.text
    assert "raise max_iter" in caplog.text


def test_label_mass_sums_the_named_labels(embedder: Embedder) -> None:
    x, y = _blobs(40, seed=7)
    clf = EmbeddingClassifier(embedder).fit_embeddings(x, y)
    probs = clf.predict_proba_embeddings(x[:10])
    np.testing.assert_allclose(clf.label_mass(x[:10], {"b", "d"}), probs[:, 1] + probs[:, 3])
    np.testing.assert_allclose(clf.label_mass(x[:10], CLASSES), 1.0)
    assert clf.label_mass(x[:10], ()).tolist() == [0.0] * 10
    with pytest.raises(InputError, match=r"\['z'\] are not labels of this classifier"):
        clf.label_mass(x[:10], ["a", "z"])
