"""Where finished stage-1 embeddings are kept: files on disk (training, benchmarks) and Redis (stream workers).

Both implement :class:`scoring.embedding.EmbeddingStore` and are keyed by
:func:`scoring.embedding.cache_key` (encoder, head/tail cut, sha256 of the exact input text), so a row
can only ever be reused for the same encoder input. A store may forget or fail to answer: a miss is
recomputed, never served from another key.

>>> import tempfile, numpy as np
>>> from scoring.embedding import cache_key
>>> store = DiskEmbeddingStore(tempfile.mkdtemp())
>>> key = cache_key("encoder", "passage: some text", head=64, tail=0)
>>> store.put_many([key], np.ones((1, 3), dtype=np.float32))
>>> DiskEmbeddingStore(store.directory).get_many([key, b"x" * 32])[0].tolist(), len(store)
([1.0, 1.0, 1.0], 1)
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

log = logging.getLogger("fluxscore.embcache")


class DiskEmbeddingStore:
    """Embeddings in safetensors shards under one directory.

    Each :meth:`put_many` writes one shard (``keys`` as raw 32-byte digests, ``embeddings``), atomically
    and never rewritten, so concurrent writers (parallel training runs) only add files.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._index: dict[bytes, np.ndarray] | None = None
        self._seen: set[str] = set()

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._index is None:
            self._index = {}
        if self.directory.is_dir():
            for shard in sorted(self.directory.glob("*.safetensors")):
                if shard.name in self._seen:
                    continue
                data = load_file(str(shard))
                for digest, row in zip(data["keys"], data["embeddings"], strict=True):
                    self._index[digest.tobytes()] = row
                self._seen.add(shard.name)
        return self._index

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        index = self._load()
        return [index.get(k) for k in keys]

    def put_many(self, keys: Sequence[bytes], embeddings: np.ndarray) -> None:
        if not keys:
            return
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.shape[0] != len(keys):
            raise ValueError(f"{len(keys)} keys for {emb.shape[0]} embeddings")
        key_arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32).copy()
        name = hashlib.sha256(key_arr.tobytes()).hexdigest()[:24] + ".safetensors"
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{name}.{os.getpid()}.tmp"
        save_file({"keys": key_arr, "embeddings": emb}, str(tmp))
        os.replace(tmp, self.directory / name)
        index = self._load()
        for k, row in zip(keys, emb, strict=True):
            index[k] = row

    def __len__(self) -> int:
        return len(self._load())


def _redis_unavailable() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return RedisConnectionError, RedisTimeoutError, OSError


class RedisEmbeddingStore:
    """float32 rows under ``<prefix>:emb:<hex key>``, each expiring ``ttl`` seconds after it was written.

    The optional cache of the probe workers (``FLUXSCORE_EMBEDDING_CACHE_TTL``): an article redelivered
    after a crash, re-published by a collector, or probed again after a rebalance is not encoded twice.
    Unlike idempotency it is only an optimisation, so a Redis outage never holds the probe back: a
    failed read counts as a miss, a failed write is skipped, and both are counted (``on_event``). The
    probe stage runs in a worker thread, hence the synchronous client.
    """

    def __init__(self, client: Any, *, prefix: str = "fluxscore", ttl: int = 24 * 3600,
                 on_event: Callable[[str, int], None] | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self._on_event = on_event or (lambda event, n: None)
        self._unavailable = _redis_unavailable()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisEmbeddingStore:
        import redis

        # Short timeouts: a slow cache must cost less than the encoding it would save.
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return cls(client, **kwargs)

    def _name(self, key: bytes) -> str:
        return f"{self.prefix}:emb:{key.hex()}"

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        if not keys:
            return []
        try:
            values = self.client.mget([self._name(k) for k in keys])
        except self._unavailable as exc:
            log.warning("embedding cache unavailable, encoding instead", extra={"error": str(exc)})
            self._on_event("error", 1)
            return [None] * len(keys)
        rows: list[np.ndarray | None] = [np.frombuffer(v, dtype=np.float32) if isinstance(v, bytes) and v else None
                                         for v in values]
        hits = sum(r is not None for r in rows)
        self._on_event("hit", hits)
        self._on_event("miss", len(rows) - hits)
        return rows

    def put_many(self, keys: Sequence[bytes], embeddings: np.ndarray) -> None:
        if not keys:
            return
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key, row in zip(keys, emb, strict=True):
                    pipe.set(self._name(key), row.tobytes(), ex=self.ttl)
                pipe.execute()
        except self._unavailable as exc:
            log.warning("embedding cache unavailable, not storing", extra={"error": str(exc)})
            self._on_event("error", 1)

    def close(self) -> None:
        self.client.close()
