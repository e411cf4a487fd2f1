"""The triage model prepares itself on the first tickets a fresh worker classifies: once,
however many runs arrive meanwhile, and again after a failure rather than never."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from examples.support_triage.app import CONFIG
from examples.support_triage.model import TriageModel
from examples.support_triage.settings import triage_settings

from codara.config import load_settings
from codara.errors import ConfigError
from codara.models import Embedder

TEXTS = [
    "My card was stolen this morning",
    "How do I top up by bank transfer?",
    "Why was I charged a fee for a cash withdrawal?",
    "I still have not received my new card",
]


def _model(tmp_path: Path) -> TriageModel:
    settings = load_settings(CONFIG)
    triage = triage_settings(settings).model_copy(
        update={
            "inbox_size": 20,
            "fit_per_intent": 5,
            "tune_per_intent": 5,
            "cache_dir": tmp_path / "cache",
        }
    )
    return TriageModel(triage, settings.embedding.model_copy(update={"threads": 1}))


async def test_concurrent_first_tickets_share_one_preparation(tmp_path: Path) -> None:
    model = _model(tmp_path)
    calls = 0
    prepare = model.prepare

    def counted(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        prepare(*args, **kwargs)

    model.prepare = counted  # type: ignore[method-assign]
    intents = await asyncio.gather(*(model.classify(t) for t in TEXTS * 8))
    assert calls == 1
    assert model.embedder.is_loaded
    assert len(intents) == len(TEXTS) * 8
    assert {i.label for i in intents[: len(TEXTS)]} == {i.label for i in intents[-len(TEXTS) :]}
    assert all(0.0 <= i.confidence <= 1.0 for i in intents)


async def test_a_failed_preparation_is_tried_again(tmp_path: Path) -> None:
    model = _model(tmp_path)
    model._embedder = Embedder(model_path=tmp_path / "missing.onnx", threads=1)
    with pytest.raises(ConfigError):
        await model.classify(TEXTS[0])
    model._embedder = Embedder(threads=1)  # the file is back
    intent = await model.classify(TEXTS[0])
    assert intent.model == model.name


def test_bad_fit_per_intent_and_unknown_sensitive_intents_are_refused(tmp_path: Path) -> None:
    settings = load_settings(CONFIG)
    for bad in (3, "some", 2.5):
        with pytest.raises(ValueError, match='must be "all" or a whole number of at least 5'):
            triage_settings(settings).model_validate({"fit_per_intent": bad})
    model = _model(tmp_path)
    model = TriageModel(
        model.settings.model_copy(update={"sensitive_intents": ("compromised_crad",)}),
        model.embedding,
    )
    with pytest.raises(ConfigError, match=r"\['compromised_crad'\], which the classifier"):
        model.prepare()
