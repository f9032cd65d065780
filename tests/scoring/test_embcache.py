"""The Redis embedding store against a real redis-server: hits skip the encoder, an outage only costs time."""

from __future__ import annotations

import itertools
import socket
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from scoring.article import Article
from scoring.embcache import RedisEmbeddingStore
from scoring.embedding import Embedder, encode_cached, load_embedder
from scoring.pipeline import Pipeline
from streams.embedded import EmbeddedRedis
from tests.integration.conftest import redis_server, redis_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
__all__ = ["redis_server"]  # the session's real redis-server fixture
_n = itertools.count()


class CountingEmbedder(Embedder):
    """The real encoder, counting the texts it is asked to encode."""

    def __init__(self, inner: Embedder) -> None:
        self.__dict__.update(inner.__dict__)
        self.encoded = 0

    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        self.encoded += len(texts)
        return super().encode(texts, **kwargs)


def _store(url: str, events: Counter[str]) -> RedisEmbeddingStore:
    return RedisEmbeddingStore.from_url(url, prefix=f"test-emb-{next(_n)}", ttl=60,
                                        on_event=lambda event, n: events.update({event: n}))


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there any more


TEXTS = ["Solar cooperative shares its profits with the whole village.", "Bridge reopens after repairs.",
         "Solar cooperative shares its profits with the whole village."]


def test_second_pass_comes_from_redis(redis_server: EmbeddedRedis | str) -> None:
    embedder = CountingEmbedder(load_embedder("all-MiniLM-L6-v2"))
    events: Counter[str] = Counter()
    store = _store(redis_url(redis_server), events)
    first = encode_cached(embedder, TEXTS, store, head=64, tail=16)
    assert embedder.encoded == 2  # the repeated text is encoded once
    again = encode_cached(embedder, TEXTS, store, head=64, tail=16)
    assert embedder.encoded == 2
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, embedder.encode(TEXTS, head=64, tail=16), atol=1e-6)
    assert events["hit"] == 3 and events["miss"] == 3
    encode_cached(embedder, TEXTS[:1], store, head=32, tail=0)  # another window is another key
    assert embedder.encoded == 3 + 3


def test_redis_outage_falls_back_to_encoding() -> None:
    embedder = CountingEmbedder(load_embedder("all-MiniLM-L6-v2"))
    events: Counter[str] = Counter()
    out = encode_cached(embedder, TEXTS, _store(_dead_url(), events), head=64, tail=16)
    np.testing.assert_allclose(out, load_embedder("all-MiniLM-L6-v2").encode(TEXTS, head=64, tail=16), atol=1e-6)
    assert embedder.encoded == 2
    assert events["error"] == 2  # the read and the write each failed once, and neither raised


def test_pipeline_probes_a_redelivered_batch_without_encoding(redis_server: EmbeddedRedis | str) -> None:
    pipeline = Pipeline.load("demo,demo_tech")
    events: Counter[str] = Counter()
    pipeline.embedding_store = _store(redis_url(redis_server), events)
    articles = [Article(id=f"e{i}", title=f"Story {i}", content=f"{TEXTS[i % 2]} Day {i} of the project. " * 8)
                for i in range(6)]
    _, screened = pipeline.screen(articles)
    first, first_esc = pipeline.probe(screened)
    assert events["miss"] > 0 and events["hit"] == 0
    misses = events["miss"]
    second, second_esc = pipeline.probe(screened)
    assert events["hit"] == misses and events["miss"] == misses
    assert [(r.key, r.weighted_average) for r in first] == [(r.key, r.weighted_average) for r in second]
    assert [e.model_dump(exclude={"timings_ms"}) for e in first_esc] == \
        [e.model_dump(exclude={"timings_ms"}) for e in second_esc]
