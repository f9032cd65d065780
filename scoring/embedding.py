"""Stage-1 encoder: one sentence-transformers model, shared by every filter's probe and the commerce detector.

Token ids are built with :func:`scoring.text.encode_head_tail` rather than the model's own tokenize step,
so long articles keep their head *and* tail (sentence-transformers would keep only the head), and
training and serving cut text the same way. The model's modules (transformer, pooling, normalize) do
the rest, so results equal ``SentenceTransformer.encode`` whenever no truncation happens.

The encoder runs in fp32 on every device: embeddings are cached on disk and fed to probes trained on
CPU-made embeddings, and a MiniLM-sized encoder gains little from bf16.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch

from scoring.models import hub_offline, load_error, model_revision, resolve_model_ref
from scoring.text import encode_head_tail

if TYPE_CHECKING:
    from scoring.commerce import CommerceConfig
    from scoring.package import FilterConfig


class EmbeddingKey(NamedTuple):
    """Everything that decides a stage-1 embedding besides the article: encoder, text prefix, head+tail cut.

    Serving, training, the commerce classifier and the benchmarks all build their encoder input from one
    of these (:meth:`inputs`, :func:`embed`), so a probe is never trained on a text that serving would
    prepare differently. Filters with equal keys share one embedding per article.

    >>> key = EmbeddingKey("intfloat/multilingual-e5-small", "passage: ", 128, 64)
    >>> key.inputs(["Title\\n\\nBody"])
    ['passage: Title\\n\\nBody']
    """

    model: str
    prefix: str
    head: int
    tail: int

    @classmethod
    def of(cls, config: FilterConfig) -> EmbeddingKey:
        """The key of a filter package's probe."""
        return cls(config.stage1.embedding_model, config.stage1.text_prefix, config.preprocessing.head_tokens,
                   config.preprocessing.tail_tokens)

    @classmethod
    def of_commerce(cls, config: CommerceConfig) -> EmbeddingKey:
        """The key the commerce classifier was trained on."""
        return cls(config.embedding_model, config.text_prefix, config.head_tokens, config.tail_tokens)

    def inputs(self, texts: Sequence[str]) -> list[str]:
        """The encoder's input for each article text (:func:`scoring.text.article_text`)."""
        return [self.prefix + t for t in texts] if self.prefix else list(texts)


def embed(embedder: Embedder, key: EmbeddingKey, texts: Sequence[str], batch_size: int = 64,
          store: EmbeddingStore | None = None) -> np.ndarray:
    """The stage-1 embedding of article texts exactly as serving computes it (training calls this too)."""
    return encode_cached(embedder, key.inputs(texts), store, head=key.head, tail=key.tail, batch_size=batch_size)


class EmbeddingStore(Protocol):
    """Where finished embeddings are kept: training's files on disk, the stream workers' Redis.

    A store may forget or fail to answer (a miss is then recomputed); it must never return a row for
    another key."""

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]: ...

    def put_many(self, keys: Sequence[bytes], embeddings: np.ndarray) -> None: ...


def cache_key(model_ref: str, text: str, *, head: int, tail: int, max_length: int | None = None) -> bytes:
    """32 bytes naming one embedding: the encoder, the cut and the text exactly as encoded."""
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    spec = f"{model_ref}\0{head}\0{tail}\0{max_length or ''}\0{text_hash}"
    return hashlib.sha256(spec.encode("utf-8")).digest()


def encode_cached(embedder: Embedder, texts: Sequence[str], store: EmbeddingStore | None, *, head: int, tail: int,
                  batch_size: int = 64, max_length: int | None = None) -> np.ndarray:
    """Embeddings of ``texts``, encoding only those ``store`` does not hold (and storing those)."""
    if store is None or not texts:
        return embedder.encode(texts, head=head, tail=tail, batch_size=batch_size, max_length=max_length)
    keys = [cache_key(embedder.model_ref, t, head=head, tail=tail, max_length=max_length) for t in texts]
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    todo: dict[bytes, list[int]] = {}
    for i, (key, row) in enumerate(zip(keys, store.get_many(keys), strict=True)):
        if row is not None and row.shape == (embedder.dim,):
            out[i] = row
        else:
            todo.setdefault(key, []).append(i)
    if todo:
        fresh = embedder.encode([texts[rows[0]] for rows in todo.values()], head=head, tail=tail,
                                batch_size=batch_size, max_length=max_length)
        for rows, row in zip(todo.values(), fresh, strict=True):
            out[rows] = row
        store.put_many(list(todo), fresh)
    return out


class Embedder:
    """A loaded sentence-transformers model that encodes head+tail-truncated texts."""

    def __init__(self, model: Any, model_ref: str, device: str = "cpu", revision: str | None = None) -> None:
        self.model = model
        self.model_ref = model_ref
        self.device = device
        # Which files the model was loaded from (scoring.models.model_revision), for the records' provenance.
        self.revision = revision if revision is not None else model_revision(model_ref)
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length)
        dim = (model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
               else model.get_sentence_embedding_dimension())
        self.dim = int(dim)
        self._uses_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else 0

    def token_ids(self, texts: Sequence[str], *, head: int, tail: int,
                  max_length: int | None = None) -> list[list[int]]:
        """The ids :meth:`encode` feeds the model (special tokens included)."""
        limit = self.max_length if max_length is None else min(max_length, self.max_length)
        return encode_head_tail(self.tokenizer, texts, head=head, tail=tail, max_length=limit)

    def encode(self, texts: Sequence[str], *, head: int, tail: int, batch_size: int = 64,
               max_length: int | None = None) -> np.ndarray:
        """(n, dim) float32 embeddings; ``max_length`` may only lower the encoder's own limit."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts, head=head, tail=tail, max_length=max_length)
        # Sorting by length keeps padding (wasted compute) small in every batch.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                features = self._features([ids[i] for i in chunk])
                emb = self.model.forward(features)["sentence_embedding"]
                out[chunk] = emb.float().cpu().numpy()
        return out

    def _features(self, batch: list[list[int]]) -> dict[str, Any]:
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        features: dict[str, Any] = {"input_ids": input_ids.to(self.device),
                                    "attention_mask": mask.to(self.device), "modality": "text"}
        if self._uses_token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        return features


_CACHE: dict[tuple[str, str], Embedder] = {}
_LOCK = threading.Lock()


def load_embedder(model_ref: str, device: str = "cpu") -> Embedder:
    """Load a sentence-transformers model once per (model, device) in this process."""
    # Keyed by what the ref resolves to: "all-MiniLM-L6-v2" and its hub id are one model in memory.
    key = (resolve_model_ref(model_ref), device)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(resolve_model_ref(model_ref), device=device,
                                        local_files_only=hub_offline())
        except Exception as exc:
            raise load_error(model_ref, "sentence-transformers encoder", exc) from exc
        model.eval()
        # Once per process and model, at load: every record this encoder serves names these files.
        embedder = Embedder(model, model_ref, device, revision=model_revision(model_ref))
        _CACHE[key] = embedder
        return embedder
