"""The triage model: the built-in offline classifier (all-MiniLM-L6-v2 int8 embeddings and a
logistic regression), with a confidence threshold set on held-out tuning examples, and for
every ticket the probability that it is about a sensitive intent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from codara.config import EmbeddingSettings
from codara.errors import ConfigError
from codara.models import Embedder, EmbeddingClassifier, Prediction, TextBatcher, pick_threshold

from .data import Split, load_examples, split
from .settings import TriageSettings


class Intent(BaseModel):
    label: str
    confidence: float
    sensitive_mass: float
    """The summed probability of the sensitive intents (``[triage] sensitive_intents``): how
    likely the ticket is to be about one of them, whatever its top intent."""
    model: str
    threshold: float
    """The auto-answer threshold the model had: journaled with the intent, so a replay on a
    worker that has not prepared the model decides with the same value."""

    def policy_inputs(self, sensitive: frozenset[str]) -> dict[str, object]:
        """What the triage's review policies see of this intent ([workflows.triage]
        policy_input; Codara adds ``data``)."""
        return {
            "intent": self.label,
            "confidence": self.confidence,
            "threshold": self.threshold,
            "sensitive": self.label in sensitive,
            "sensitive_mass": self.sensitive_mass,
        }


Scored = tuple[Prediction, float]
"""A ticket's prediction and its sensitive mass."""


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
        self._sensitive: frozenset[str] = frozenset(settings.sensitive_intents)
        self._batcher: TextBatcher[Scored] | None = None
        self._preparing: asyncio.Future[tuple[None, None]] | None = None

    @property
    def embedder(self) -> Embedder:
        """The embedder this model classifies with ([embedding] threads)."""
        if self._embedder is None:
            threads = self.embedding.threads or None
            self._embedder = Embedder.shared() if threads is None else Embedder(threads=threads)
        return self._embedder

    @property
    def batcher(self) -> TextBatcher[Scored]:
        """Batches concurrent runs' tickets into model calls ([embedding] batch_*)."""
        if self._batcher is None:
            if self._classifier is None:
                raise RuntimeError("the model is not prepared yet")
            self._batcher = TextBatcher(self.embedder, self.score_embeddings, self.embedding)
        return self._batcher

    def score_embeddings(self, embeddings: npt.NDArray[np.float32]) -> list[Scored]:
        """Each embedding's prediction and sensitive mass."""
        if self._classifier is None:
            raise RuntimeError("the model is not prepared yet")
        predictions = self._classifier.predict_embeddings(embeddings)
        mass = self._classifier.label_mass(embeddings, self._sensitive)
        return [(p, float(m)) for p, m in zip(predictions, mass, strict=True)]

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
            unknown = sorted(self._sensitive - set(clf.labels))
            if unknown:
                raise ConfigError(
                    f"[triage] sensitive_intents names {unknown}, which the classifier does "
                    "not know",
                    hint="name intents as the training data spells them (its category column)",
                )
            tune_vectors = clf.embedder.embed_cached([e.text for e in parts.tune], cfg.cache_dir)
            # A sensitive top intent never goes out by itself: the threshold is for the rest.
            tune = [
                (p, e)
                for p, e in zip(clf.predict_embeddings(tune_vectors), parts.tune, strict=True)
                if p.label not in self._sensitive
            ]
            self._threshold = pick_threshold(
                [p.confidence for p, _ in tune],
                [p.label == e.label for p, e in tune],
                cfg.target_precision,
                confidence=cfg.threshold_confidence,
            )
            self._classifier = clf

    async def classify(self, text: str) -> Intent:
        """One message's intent. Concurrent runs' texts share model calls, grouped by
        token length (see ``TextBatcher``)."""
        if self._classifier is None:
            await asyncio.shield(self._prepare_once())
        prediction, mass = await self.batcher(text)
        return self.intent(prediction, mass)

    def intent(self, prediction: Prediction, sensitive_mass: float) -> Intent:
        """The intent ``classify`` journals for a prediction and its sensitive mass."""
        return Intent(
            label=prediction.label,
            confidence=round(prediction.confidence, 6),
            sensitive_mass=round(sensitive_mass, 6),
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
