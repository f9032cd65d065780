"""The idempotency store against a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from scoring.aggregate import Tier
from scoring.records import FilterRef, PrefilterResult, RecordKey, ScoreRecord, StageUsed
from streams.dedupe import DedupeStore
from streams.embedded import EmbeddedRedis
from tests.integration.conftest import redis_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
_n = itertools.count()


def _record(article: str, score: float, at: datetime | None = None) -> ScoreRecord:
    return ScoreRecord(article_id=article, filter=FilterRef(name="demo", version="1.0.0", package_hash="abc123"),
                       model_hashes={"probe": "p"}, stage=StageUsed.STAGE1, weighted_average=score, tier=Tier.LOW,
                       prefilter=PrefilterResult(passed=True), scored_at=at or datetime.now(UTC))


def _store(redis_server: EmbeddedRedis | str, **kwargs: object) -> DedupeStore:
    return DedupeStore.from_url(redis_url(redis_server), prefix=f"test-dedupe-{next(_n)}", **kwargs)


def test_first_writer_wins_and_sent_keys_are_skipped(redis_server) -> None:
    async def run() -> None:
        store = _store(redis_server)
        first = _record("a|1", 3.0)
        later = _record("a|1", 9.0, datetime.now(UTC) + timedelta(seconds=5))  # a re-scoring, different result
        (claim,) = await store.claim([first])
        assert claim.fresh and not claim.sent and claim.payload == first.to_json()
        assert claim.key == RecordKey("a|1", "demo", "abc123") and claim.filter == "demo"
        assert store.redis_key(claim.key) == f"{store.prefix}:score:a|1|demo|abc123", "the Redis key format is fixed"

        (again,) = await store.claim([later])
        assert not again.fresh and not again.sent
        assert again.payload == first.to_json(), "a redelivery re-emits the stored record, not a new one"

        await store.mark_sent([claim.key])
        (done,) = await store.claim([later])
        assert done.sent and done.payload == first.to_json()

        found = await store.lookup([claim.key, RecordKey.parse("missing|demo|abc123")])
        assert list(found) == [claim.key] and found[claim.key].sent and found[claim.key].filter == "demo"
        assert await store.client.ttl(store.redis_key(claim.key)) > 0
        await store.close()

    asyncio.run(run())


def test_one_batch_with_a_key_twice_stores_one_record(redis_server) -> None:
    async def run() -> None:
        store = _store(redis_server)
        a, b = _record("x", 1.0), _record("x", 2.0)
        first, second = await store.claim([a, b])
        assert first.fresh and not second.fresh
        assert first.payload == second.payload == a.to_json()
        await store.close()

    asyncio.run(run())


def test_redis_outage_waits_and_nothing_is_dropped(redis_server) -> None:
    if not isinstance(redis_server, EmbeddedRedis):
        pytest.skip("needs the test session's own redis-server to stop it")
    retries: list[int] = []

    async def run() -> None:
        store = _store(redis_server, max_backoff=0.2, on_retry=lambda exc, n: retries.append(n))
        await store.wait_ready()
        redis_server.stop()
        claim = asyncio.create_task(store.claim([_record("during-outage", 5.0)]))
        await asyncio.sleep(1.0)
        assert not claim.done(), "the claim must wait for Redis, not fail or skip"
        await asyncio.to_thread(redis_server.start)
        (result,) = await asyncio.wait_for(claim, 30)
        assert result.fresh
        assert (await store.lookup([result.key]))[result.key].payload == result.payload
        await store.close()

    try:
        asyncio.run(run())
    finally:
        if redis_server.proc is None or redis_server.proc.poll() is not None:
            redis_server.start()
    assert retries, "the wait was counted"


def test_records_survive_a_redis_restart(redis_server) -> None:
    if not isinstance(redis_server, EmbeddedRedis):
        pytest.skip("needs the test session's own redis-server to restart it")

    async def before() -> RecordKey:
        store = _store(redis_server)
        store.prefix = "test-dedupe-restart"
        (claim,) = await store.claim([_record("persisted", 4.0)])
        await store.mark_sent([claim.key])
        await store.close()
        return claim.key

    async def after(key: RecordKey) -> bool:
        store = _store(redis_server)
        store.prefix = "test-dedupe-restart"
        found = await store.lookup([key])
        await store.close()
        return found[key].sent

    key = asyncio.run(before())
    redis_server.restart()
    assert asyncio.run(after(key))
