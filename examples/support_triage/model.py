"""The triage model: the built-in offline classifier (all-MiniLM-L6-v2 int8 embeddings and a
logistic regression), with a confidence threshold set on held-out tuning examples."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from pydantic import BaseModel

from codara.config import EmbeddingSettings
from codara.models import Embedder, EmbeddingClassifier, Prediction, TextBatcher, pick_threshold

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

    def __init__(
        self, settings: TriageSettings, embedding: EmbeddingSettings | None = None
    ) -> None:
        self.settings = settings
        self.embedding = embedding if embedding is not None else EmbeddingSettings()
        self._lock = threading.Lock()
        self._embedder: Embedder | None = None
        self._classifier: EmbeddingClassifier | None = None
        self._threshold: float | None = None
        self._batcher: TextBatcher[Prediction] | None = None
        self._preparing: asyncio.Future[tuple[None, None]] | None = None

    @property
    def embedder(self) -> Embedder:
        """The embedder this model classifies with ([embedding] threads)."""
        if self._embedder is None:
            threads = self.embedding.threads or None
            self._embedder = Embedder.shared() if threads is None else Embedder(threads=threads)
        return self._embedder

    @property
    def batcher(self) -> TextBatcher[Prediction]:
        """Batches concurrent runs' tickets into model calls ([embedding] batch_*)."""
        if self._batcher is None:
            if self._classifier is None:
                raise RuntimeError("the model is not prepared yet")
            self._batcher = TextBatcher(
                self.embedder, self._classifier.predict_embeddings, self.embedding
            )
        return self._batcher

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
            clf = EmbeddingClassifier(self.embedder).fit_cached(
                texts, labels, cfg.cache_dir, on_progress=on_progress
            )
            tune_vectors = clf.embedder.embed_cached([e.text for e in parts.tune], cfg.cache_dir)
            tune = clf.predict_embeddings(tune_vectors)
            correct = [p.label == e.label for p, e in zip(tune, parts.tune, strict=True)]
            self._threshold = pick_threshold(
                [p.confidence for p in tune], correct, cfg.target_precision
            )
            self._classifier = clf

    async def classify(self, text: str) -> Intent:
        """One message's intent. Concurrent runs' texts share model calls, grouped by
        token length (see ``TextBatcher``)."""
        if self._classifier is None:
            await asyncio.shield(self._prepare_once())
        prediction = await self.batcher(text)
        return Intent(
            label=prediction.label,
            confidence=round(prediction.confidence, 6),
            model=self.name,
            threshold=self.threshold,
        )

    def _prepare_once(self) -> asyncio.Future[tuple[None, None]]:
        """The classifier's cache load and the ONNX session's, side by side in two threads
        (each about 0.2-0.6 s at a worker's start, mostly outside the GIL), shared by every
        run that arrives meanwhile. A failure is not kept: the next run tries again."""
        if self._preparing is None:
            preparing = asyncio.gather(
                asyncio.to_thread(self.prepare), asyncio.to_thread(self.embedder.load)
            )

            def forget_failure(done: asyncio.Future[tuple[None, None]]) -> None:
                if done.cancelled() or done.exception() is not None:
                    self._preparing = None

            preparing.add_done_callback(forget_failure)
            self._preparing = preparing
            return preparing
        return self._preparing

    @property
    def name(self) -> str:
        return "minilm-l6-int8+logreg"

    def describe(self) -> str:
        return f"{self.name}, auto-answer threshold {self.threshold:.3f}"
