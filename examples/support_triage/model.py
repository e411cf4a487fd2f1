"""The triage model: the built-in offline classifier (all-MiniLM-L6-v2 int8 embeddings and a
logistic regression), with a confidence threshold set on held-out tuning examples."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from pydantic import BaseModel

from codara.models import EmbeddingClassifier, MicroBatcher, Prediction, pick_threshold

from .data import Split, load_examples, split
from .settings import TriageSettings


class Intent(BaseModel):
    label: str
    confidence: float
    model: str
    threshold: float
    """The auto-answer threshold the model had: journaled with the intent, so a replay on a
    worker that has not prepared the model decides with the same value."""


class TriageModel:
    """Fitted once per process (from the disk cache when the data has not changed)."""

    def __init__(self, settings: TriageSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._classifier: EmbeddingClassifier | None = None
        self._threshold: float | None = None
        self._batcher: MicroBatcher[str, Prediction] | None = None

    @property
    def threshold(self) -> float:
        if self._threshold is None:
            raise RuntimeError("the model is not prepared yet")
        return self._threshold

    def prepare(
        self, parts: Split | None = None, on_progress: Callable[[int, int], None] | None = None
    ) -> None:
        """Fit (or load from the cache) and calibrate. Thread-safe; runs once."""
        with self._lock:
            if self._classifier is not None:
                return
            cfg = self.settings
            if parts is None:
                parts = split(
                    load_examples(),
                    inbox_size=cfg.inbox_size,
                    fit_per_intent=cfg.fit_per_intent,
                    tune_per_intent=cfg.tune_per_intent,
                    seed=cfg.seed,
                )
            texts = [e.text for e in parts.fit]
            labels = [e.label for e in parts.fit]
            clf = EmbeddingClassifier().fit_cached(
                texts, labels, cfg.cache_dir, on_progress=on_progress
            )
            tune_vectors = clf.embedder.embed_cached([e.text for e in parts.tune], cfg.cache_dir)
            tune = clf.predict_embeddings(tune_vectors)
            correct = [p.label == e.label for p, e in zip(tune, parts.tune, strict=True)]
            self._threshold = pick_threshold(
                [p.confidence for p in tune], correct, cfg.target_precision
            )
            self._classifier = clf

    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        assert self._classifier is not None
        return list(self._classifier.predict(list(texts)))

    async def classify(self, text: str) -> Intent:
        """One message's intent. Concurrent runs' calls are batched into one model call."""
        if self._classifier is None:
            import asyncio

            await asyncio.to_thread(self.prepare)
        if self._batcher is None:
            self._batcher = MicroBatcher(self.predict_batch, max_batch=32)
        prediction = await self._batcher(text)
        return Intent(
            label=prediction.label,
            confidence=round(prediction.confidence, 6),
            model=self.name,
            threshold=self.threshold,
        )

    @property
    def name(self) -> str:
        return "minilm-l6-int8+logreg"

    def describe(self) -> str:
        return f"{self.name}, auto-answer threshold {self.threshold:.3f}"
