"""The optional embedding cache in Redis (``FLUXSCORE_EMBEDDING_CACHE_TTL``).

An article redelivered after a crash, re-published by a collector, or probed again after a rebalance is
not encoded twice. Unlike idempotency this is only an optimisation, so a Redis outage never holds the
probe agent back: a failed read counts as a miss, a failed write is skipped, and both are counted.
The probe stage runs in a worker thread, hence the synchronous client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import redis

from streams.dedupe import REDIS_UNAVAILABLE

log = logging.getLogger(__name__)


class RedisEmbeddingStore:
    """float32 rows under ``<prefix>:emb:<hex key>``, each expiring ``ttl`` seconds after it was written."""

    def __init__(self, client: redis.Redis, *, prefix: str = "fluxscore", ttl: int = 24 * 3600,
                 on_event: Callable[[str, int], None] | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self._on_event = on_event or (lambda event, n: None)

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> RedisEmbeddingStore:
        # Short timeouts: a slow cache must cost less than the encoding it would save.
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return cls(client, **kwargs)  # type: ignore[arg-type]

    def _name(self, key: bytes) -> str:
        return f"{self.prefix}:emb:{key.hex()}"

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        if not keys:
            return []
        try:
            values = self.client.mget([self._name(k) for k in keys])
        except REDIS_UNAVAILABLE as exc:
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
        except REDIS_UNAVAILABLE as exc:
            log.warning("embedding cache unavailable, not storing", extra={"error": str(exc)})
            self._on_event("error", 1)

    def close(self) -> None:
        self.client.close()
