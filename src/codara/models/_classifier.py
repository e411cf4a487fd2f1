"""A text classifier: sentence embeddings plus multinomial logistic regression, in numpy.

Training (``_training``) is full-batch L-BFGS on the L2-regularised cross-entropy, started
from zero, so the same data always gives the same weights. Saved models are an ``.npz`` of
weights and a JSON file of metadata (no pickle); the JSON carries the weights' sha256 and
the embedding model id.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import zipfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from codara.errors import ConfigError, InputError
from codara.models._embedding import (
    EMBEDDING_DIM,
    Embedder,
    ProgressCallback,
    atomic_write_bytes,
    check_texts,
    hash_strings,
)
from codara.models._training import F64, softmax, train

logger = logging.getLogger(__name__)

_FORMAT = "codara.embedding-classifier/1"
_WEIGHTS_FILE = "weights.npz"
_META_FILE = "classifier.json"


class Prediction(BaseModel):
    """The top label, its softmax probability, and the top three (label, probability) pairs."""

    model_config = ConfigDict(frozen=True)

    label: str
    confidence: float
    alternatives: tuple[tuple[str, float], ...] = ()


class EmbeddingClassifier:
    """Assigns one of the labels seen in training to a text, with a confidence."""

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        l2: float = 3e-3,
        max_iter: int = 300,
    ) -> None:
        if l2 <= 0 or max_iter < 1:
            raise ValueError(f"need l2 > 0 and max_iter >= 1, got l2={l2}, max_iter={max_iter}")
        self._embedder = embedder if embedder is not None else Embedder.shared()
        self._l2 = float(l2)
        self._max_iter = int(max_iter)
        self._labels: tuple[str, ...] = ()
        self._weights: F64 = np.zeros((EMBEDDING_DIM, 0))
        self._bias: F64 = np.zeros(0)
        self.converged: bool | None = None
        """Whether the last :meth:`fit_embeddings` converged (None: loaded, or not fitted)."""

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels this classifier can assign, sorted; empty before fitting."""
        return self._labels

    @property
    def is_fitted(self) -> bool:
        return bool(self._labels)

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Self:
        """Embed ``texts`` and fit on them; ``on_progress`` reports the embedding."""
        _check_pairs(texts, labels)
        return self.fit_embeddings(self._embedder.embed(texts, on_progress=on_progress), labels)

    def fit_embeddings(self, embeddings: npt.ArrayLike, labels: Sequence[str]) -> Self:
        """Fit on precomputed embeddings (rows from this classifier's embedder)."""
        x = self._check_matrix(embeddings)
        names = sorted(set(labels))
        if len(x) != len(labels):
            raise InputError(f"{len(x)} embeddings but {len(labels)} labels")
        if len(names) < 2:
            raise InputError(f"need at least two distinct labels to fit, got {names}")
        index = {name: i for i, name in enumerate(names)}
        y = np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))
        started = time.perf_counter()
        fitted = train(x, y, len(names), self._l2, self._max_iter)
        self._weights, self._bias = fitted.weights, fitted.bias
        self._labels = tuple(names)
        self.converged = fitted.converged
        logger.info(
            "fitted %d labels on %d examples in %.2f s (%d iterations, gradient %.1e of its start)",
            len(names),
            len(x),
            time.perf_counter() - started,
            fitted.iterations,
            fitted.gradient_ratio,
        )
        if not fitted.converged:
            logger.warning(
                "the classifier did not converge in %d iterations (gradient %.1e of its "
                "start): raise max_iter",
                fitted.iterations,
                fitted.gradient_ratio,
            )
        return self

    def fit_cached(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        cache_dir: str | os.PathLike[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Self:
        """Like :meth:`fit`, but reuse the model and embeddings saved under ``cache_dir``.

        Keyed by the embedding model id, the settings, and every text and label; a damaged
        cache entry is logged and rebuilt.
        """
        _check_pairs(texts, labels)
        settings = f"l2={self._l2!r};max_iter={self._max_iter}"
        key = hash_strings(
            [_FORMAT, self._embedder.model_id, settings, str(len(texts)), *texts, *labels]
        )
        path = Path(cache_dir) / f"classifier-{key}"
        if (path / _META_FILE).exists():
            try:
                cached = type(self).load(path, embedder=self._embedder)
            except Exception as exc:  # a cache must never be the reason a run fails
                logger.warning("ignoring unusable classifier cache %s (%s); rebuilding", path, exc)
            else:
                self._labels = cached._labels
                self._weights, self._bias = cached._weights, cached._bias
                return self
        vectors = self._embedder.embed_cached(texts, cache_dir, on_progress=on_progress)
        self.fit_embeddings(vectors, labels)
        try:
            self.save(path)
        except OSError as exc:
            logger.warning("could not write classifier cache %s (%s)", path, exc)
        return self

    def predict(
        self, texts: Sequence[str], *, on_progress: ProgressCallback | None = None
    ) -> list[Prediction]:
        """Classify ``texts``, in order."""
        self._require_fitted()
        return self.predict_embeddings(self._embedder.embed(texts, on_progress=on_progress))

    def predict_embeddings(self, embeddings: npt.ArrayLike) -> list[Prediction]:
        """Classify precomputed embeddings, in order."""
        probs = self.predict_proba_embeddings(embeddings)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
        out = []
        for row, ranked in zip(probs, top, strict=True):
            alternatives = tuple((self._labels[j], float(row[j])) for j in ranked)
            out.append(
                Prediction(
                    label=alternatives[0][0],
                    confidence=alternatives[0][1],
                    alternatives=alternatives,
                )
            )
        return out

    def predict_proba_embeddings(self, embeddings: npt.ArrayLike) -> F64:
        """Softmax probabilities, one row per embedding, one column per label in ``labels``."""
        self._require_fitted()
        return softmax(self._check_matrix(embeddings) @ self._weights + self._bias)

    def label_mass(self, embeddings: npt.ArrayLike, labels: Collection[str]) -> F64:
        """Per embedding, the summed probability of ``labels`` (all of them labels of this
        classifier): how likely the text is to be any of them, whatever its top label."""
        self._require_fitted()
        unknown = sorted(set(labels) - set(self._labels))
        if unknown:
            raise InputError(
                f"{unknown} are not labels of this classifier",
                hint="name labels as they are spelled in the training data",
            )
        columns = [i for i, label in enumerate(self._labels) if label in set(labels)]
        mass: F64 = self.predict_proba_embeddings(embeddings)[:, columns].sum(axis=1)
        return mass

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the classifier into directory ``path``: weights.npz and classifier.json."""
        self._require_fitted()
        directory = Path(path)
        buffer = io.BytesIO()
        np.savez(buffer, weights=self._weights, bias=self._bias)
        weights = buffer.getvalue()
        meta = {
            "format": _FORMAT,
            "model_id": self._embedder.model_id,
            "labels": list(self._labels),
            "l2": self._l2,
            "max_iter": self._max_iter,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
        }
        atomic_write_bytes(directory / _WEIGHTS_FILE, weights)
        atomic_write_bytes(directory / _META_FILE, json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, embedder: Embedder | None = None) -> Self:
        """Read a classifier written by :meth:`save`; checks format, integrity and model id."""
        directory = Path(path)
        try:
            meta: Any = json.loads((directory / _META_FILE).read_text(encoding="utf-8"))
            weights_bytes = (directory / _WEIGHTS_FILE).read_bytes()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read a saved classifier at {directory}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise InputError(f"{directory / _META_FILE} is not a {_FORMAT} file")
        if meta.get("weights_sha256") != hashlib.sha256(weights_bytes).hexdigest():
            raise InputError(f"{directory / _WEIGHTS_FILE} does not match its classifier.json")
        labels, l2, max_iter = meta.get("labels"), meta.get("l2"), meta.get("max_iter")
        if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise InputError(f"{directory / _META_FILE} has no valid label list")
        if not (isinstance(l2, float) and isinstance(max_iter, int)):
            raise InputError(f"{directory / _META_FILE} has no valid settings")
        clf = cls(embedder, l2=l2, max_iter=max_iter)
        if meta.get("model_id") != clf._embedder.model_id:
            raise ConfigError(
                f"the classifier at {directory} was trained on embeddings "
                f"{meta.get('model_id')!r}, not {clf._embedder.model_id!r}",
                hint="retrain it with this version of codara",
            )
        try:
            with np.load(io.BytesIO(weights_bytes), allow_pickle=False) as arrays:
                weights, bias = np.asarray(arrays["weights"]), np.asarray(arrays["bias"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"cannot read {directory / _WEIGHTS_FILE}: {exc}") from exc
        k = len(labels)
        if weights.shape != (EMBEDDING_DIM, k) or bias.shape != (k,) or k < 2:
            raise InputError(f"{directory / _WEIGHTS_FILE} does not fit {k} labels")
        if weights.dtype != np.float64 or bias.dtype != np.float64:
            raise InputError(f"{directory / _WEIGHTS_FILE} does not hold float64 weights")
        clf._labels, clf._weights, clf._bias = tuple(labels), weights, bias
        return clf

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("this classifier is not fitted yet: call fit() or load()")

    def _check_matrix(self, embeddings: npt.ArrayLike) -> F64:
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != EMBEDDING_DIM:
            raise InputError(f"expected embeddings of shape (n, {EMBEDDING_DIM}), got {x.shape}")
        return x


def _check_pairs(texts: Sequence[str], labels: Sequence[str]) -> None:
    check_texts(texts)
    if len(texts) != len(labels):
        raise InputError(f"{len(texts)} texts but {len(labels)} labels")
    if any(not isinstance(label, str) for label in labels):
        raise InputError("labels must be strings")
