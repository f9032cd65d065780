"""The idempotency store against a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from scoring.aggregate import Tier
from scoring.records import FilterRef, PrefilterResult, RecordKey, ScoreRecord, StageUsed, text_hash
from streams.dedupe import DedupeStore
from streams.embedded import EmbeddedRedis
from tests.integration.conftest import redis_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
_n = itertools.count()


TEXT = text_hash("A council opened a clinic.")


def _record(article: str, score: float, at: datetime | None = None, *, text: str = "A council opened a clinic.",
            package_hash: str = "abc123") -> ScoreRecord:
    return ScoreRecord(article_id=article, filter=FilterRef(name="demo", version="1.0.0", package_hash=package_hash),
                       text_hash=text_hash(text), model_hashes={"probe": "p"}, stage=StageUsed.STAGE1,
                       weighted_average=score, tier=Tier.LOW, prefilter=PrefilterResult(passed=True),
                       scored_at=at or datetime.now(UTC))


def _store(redis_server: EmbeddedRedis | str, **kwargs: object) -> DedupeStore:
    return DedupeStore.from_url(redis_url(redis_server), prefix=f"test-dedupe-{next(_n)}", **kwargs)


def test_first_writer_wins_and_sent_keys_are_skipped(redis_server) -> None:
    async def run() -> None:
        store = _store(redis_server)
        first = _record("a|1", 3.0)
        later = _record("a|1", 9.0, datetime.now(UTC) + timedelta(seconds=5))  # a re-scoring, different result
        (claim,) = await store.claim([first])
        assert claim.fresh and not claim.sent and claim.payload == first.to_json()
        assert claim.key == RecordKey("a|1", "demo", "abc123", TEXT) and claim.filter == "demo"
        assert store.redis_key(claim.key) == f"{store.prefix}:score:a|1|demo|abc123|{TEXT}", \
            "the Redis key format is fixed"
        assert store.latest_key(claim.key) == f"{store.prefix}:latest:a|1|demo"
        assert await store.latest(claim.key) == claim.key

        (again,) = await store.claim([later])
        assert not again.fresh and not again.sent
        assert again.payload == first.to_json(), "a redelivery re-emits the stored record, not a new one"

        await store.mark_sent([claim.key])
        (done,) = await store.claim([later])
        assert done.sent and done.payload == first.to_json()

        found = await store.lookup([claim.key, RecordKey.parse(f"missing|demo|abc123|{TEXT}")])
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


def test_an_edited_article_is_a_new_record_that_supersedes_the_previous_one(redis_server) -> None:
    async def run() -> None:
        store = _store(redis_server)
        (first,) = await store.claim([_record("a|7", 3.0, text="Solar park opens; it powers 4,000 homes.")])
        assert ScoreRecord.from_json(first.payload).supersedes is None, "the first version supersedes nothing"
        await store.mark_sent([first.key])

        # Redelivered unchanged: the stored record, skipped as sent; the latest stays.
        (again,) = await store.claim([_record("a|7", 9.0, text="Solar park opens; it powers 4,000 homes.")])
        assert again.key == first.key and again.sent and again.payload == first.payload

        # Re-published with edited text: a new key, scored and emitted, naming the one it replaces.
        (edited,) = await store.claim([_record("a|7", 5.0, text="Solar park opens; it powers 6,000 homes.")])
        assert edited.fresh and not edited.sent and edited.key != first.key
        assert (edited.key.article_id, edited.key.filter, edited.key.package_hash) == ("a|7", "demo", "abc123")
        body = ScoreRecord.from_json(edited.payload)
        assert body.supersedes == first.key.format() and body.weighted_average == 5.0
        assert await store.latest(first.key) == edited.key

        # A new package version scoring the same text supersedes too (what a replay with a new version does).
        (newer,) = await store.claim([_record("a|7", 5.5, text="Solar park opens; it powers 6,000 homes.",
                                              package_hash="def456")])
        assert ScoreRecord.from_json(newer.payload).supersedes == edited.key.format()
        # Another filter's records of the same article are a chain of their own.
        other = _record("a|7", 1.0).model_copy(update={"filter": FilterRef(name="tech", version="1", package_hash="h")})
        (tech,) = await store.claim([other])
        assert ScoreRecord.from_json(tech.payload).supersedes is None
        await store.close()

    asyncio.run(run())


def test_versions_of_one_article_in_one_batch_chain_in_order(redis_server) -> None:
    async def run() -> None:
        store = _store(redis_server)
        v1, v2, v3 = (_record("b", float(i), text=f"version {i}") for i in (1, 2, 3))
        claims = await store.claim([v1, v2, v1, v3])
        bodies = [ScoreRecord.from_json(c.payload) for c in claims]
        assert [c.fresh for c in claims] == [True, True, False, True]
        assert [b.supersedes for b in bodies] == [None, v1.key, None, v2.key]
        assert claims[2].payload == claims[0].payload, "a repeat within the batch is the stored record"
        assert await store.latest(v1.record_key) == v3.record_key
        await store.close()

    asyncio.run(run())


def test_a_racing_writer_moving_the_pointer_is_seen(redis_server, monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        store = _store(redis_server)
        rival = _store(redis_server)
        rival.prefix = store.prefix
        real = store._pointers

        async def pointers_then_race(keys: list[RecordKey]) -> list[str | None]:
            read = await real(keys)
            # Another worker stores a version of the same article between our read and our write.
            await rival.claim([_record("c", 2.0, text="the rival's version")])
            return read

        monkeypatch.setattr(store, "_pointers", pointers_then_race)
        (mine,) = await store.claim([_record("c", 1.0, text="my version")])
        rival_key = _record("c", 2.0, text="the rival's version").key
        assert ScoreRecord.from_json(mine.payload).supersedes == rival_key, "rebuilt against the moved pointer"
        assert await store.latest(mine.key) == mine.key
        await store.close()
        await rival.close()

    asyncio.run(run())
