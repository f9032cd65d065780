"""Failures mid-stream: a worker killed with SIGKILL, Redis restarted. Nothing lost, no key scored twice
with different results."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis

from streams.embedded import EmbeddedRedis
from tests.integration.conftest import STREAM_FILTERS, collect, produce_lines, synthetic_articles

pytestmark = pytest.mark.integration

N = 200


def _expected(lines: list[bytes]) -> set[tuple[str, str]]:
    return {(orjson.loads(v)["id"], f) for v in lines for f in STREAM_FILTERS}


def test_kill_9_mid_stream_then_restart(stream_env, workers, tmp_path: Path) -> None:
    # With the embedding cache on, the restarted worker reads redelivered articles' embeddings from Redis.
    env = stream_env.env(FLUXSCORE_EMBEDDING_CACHE_TTL="600")
    first = workers(env)
    lines = synthetic_articles(N, seed=21)
    expected = _expected(lines)
    produce_lines(stream_env, lines, tmp_path / "articles.jsonl")

    partial = collect(stream_env, lambda c: len(c.records) >= len(expected) // 4, timeout=180, settle=0)
    assert len(partial.records) < len(expected), "the worker finished before it could be killed"
    first.kill9()
    workers(env)

    got = collect(stream_env, lambda c: len(c.records) >= len(expected), timeout=240)
    assert got.dead == []
    assert got.pairs == expected, f"{len(expected - got.pairs)} pairs lost"
    assert got.different_values() == {}, "a key carries two different records"
    cached = redis.Redis.from_url(stream_env.redis).scan_iter(match=f"fluxscore-{stream_env.name}:emb:*", count=1000)
    assert next(cached, None) is not None, "the probe agent stored its embeddings in Redis"


def test_redis_restart_mid_stream(stream_env, workers, redis_server, tmp_path: Path) -> None:
    if not isinstance(redis_server, EmbeddedRedis):
        pytest.skip("needs the test session's own redis-server to restart it")
    # The embedding cache is on too: while Redis is down it must only cost encodings, never block or drop.
    workers(stream_env.env(FLUXSCORE_EMBEDDING_CACHE_TTL="600"))
    lines = synthetic_articles(N, seed=22)
    expected = _expected(lines)
    produce_lines(stream_env, lines, tmp_path / "articles.jsonl")

    partial = collect(stream_env, lambda c: len(c.records) >= len(expected) // 5, timeout=180, settle=0)
    assert len(partial.records) < len(expected), "the worker finished before Redis could be restarted"
    redis_server.restart(down_for=3.0)

    got = collect(stream_env, lambda c: len(c.records) >= len(expected), timeout=240)
    assert got.dead == []
    assert got.pairs == expected, f"{len(expected - got.pairs)} pairs lost"
    assert got.different_values() == {}
