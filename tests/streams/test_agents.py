"""Stage handlers with the real pipeline, real Redis and the real broker (no Faust in between)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from scoring.article import parse_article
from scoring.pipeline import Escalation, Pipeline
from scoring.records import PrefilterResult, ScoreRecord
from scoring.settings import ScoringSettings
from streams.agents import Inbound, StageRunner
from streams.dedupe import DedupeStore
from streams.dlq import DeadLetterRecord, Source
from streams.kafka import aiokafka_sender, ensure_topics, make_consumer, make_producer
from streams.metrics import StreamMetrics
from streams.settings import StreamSettings
from streams.topics import Topics
from streams.wire import encode, record_key_of
from tests.integration.conftest import STREAM_FILTERS, redis_url, synthetic_articles

pytestmark = pytest.mark.integration
_n = itertools.count()


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline.load(list(STREAM_FILTERS), settings=ScoringSettings.from_env({"FLUXSCORE_DEVICE": "cpu"}))


def _inbound(payloads: list[bytes], topic: str) -> list[Inbound]:
    return [Inbound(p, Source(topic, 0, i, None)) for i, p in enumerate(payloads)]


class Harness:
    """A StageRunner wired to a fresh topic prefix and Redis prefix; reads back what it produced."""

    def __init__(self, pipeline: Pipeline, bootstrap: str, redis: str) -> None:
        n = next(_n)
        self.topics = Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_PREFIX": f"agents{n}."}))
        self.pipeline, self.bootstrap, self.redis, self.n = pipeline, bootstrap, redis, n

    async def __aenter__(self) -> StageRunner:
        await ensure_topics(self.bootstrap, self.topics.pipeline_topics(list(self.pipeline.filters)))
        self.producer = make_producer(self.bootstrap)
        await self.producer.start()
        self.dedupe = DedupeStore.from_url(self.redis, prefix=f"agents-{self.n}")
        return StageRunner(pipeline=self.pipeline, topics=self.topics, dedupe=self.dedupe,
                           send=aiokafka_sender(self.producer), metrics=StreamMetrics(), max_content_bytes=20_000)

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        await self.dedupe.close()

    async def read(self, topic: str, at_least: int, wait: float = 2.0) -> list[tuple[bytes, bytes]]:
        consumer = make_consumer(self.bootstrap, topic)
        await consumer.start()
        got: list[tuple[bytes, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        quiet_until = None
        try:
            while loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    # Score messages: by record key (their Kafka key is the article id).
                    got.extend((record_key_of(m.key, m.headers), m.value) for m in messages)  # type: ignore[misc]
                if len(got) >= at_least:
                    quiet_until = quiet_until or loop.time() + wait
                    if loop.time() > quiet_until:
                        break
        finally:
            await consumer.stop()
        return got


def test_redelivered_batch_yields_the_same_records(pipeline: Pipeline, broker, redis_server) -> None:
    articles = synthetic_articles(12, seed=31)

    async def run() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], StageRunner]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            raw = _inbound(articles, h.topics.raw.name)
            await runner.prefilter(raw)
            await runner.prefilter(raw)  # redelivered after a crash before the commit
            screened = await h.read(h.topics.screened.name, 1, wait=1.0)
            probe_in = _inbound([v for _, v in screened], h.topics.screened.name)
            await runner.probe(probe_in)
            await runner.probe(probe_in)
            escalated = await h.read(h.topics.escalated.name, 1, wait=1.0)
            model_in = _inbound([v for _, v in escalated], h.topics.escalated.name)
            await runner.model(model_in)
            await runner.model(model_in)
            scores = await h.read(h.topics.all_scores.name, len(articles) * len(STREAM_FILTERS))
            return screened, scores, runner

    screened, scores, runner = asyncio.run(run())
    keys = [k for k, _ in scores]
    assert len(keys) == len(set(keys)) == len(articles) * len(STREAM_FILTERS), "one message per key"
    skipped = {stage: runner.metrics.duplicates.labels(stage, "skipped")._value.get()
               for stage in ("prefilter", "probe", "model")}
    assert skipped["probe"] > 0 and skipped["model"] > 0, "second passes found their records delivered: skipped"
    assert {orjson.loads(v)["article"]["id"] for _, v in screened} <= {orjson.loads(a)["id"] for a in articles}


def test_a_record_stored_by_a_crashed_worker_is_the_one_emitted(pipeline: Pipeline, broker, redis_server) -> None:
    articles = synthetic_articles(4, seed=32)

    async def run() -> tuple[dict[bytes, bytes], dict[str, bytes]]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            # What a worker that died after storing its records (before sending them) left behind:
            # the same scores, an earlier scored_at.
            records, screened = pipeline.screen([parse_article(a) for a in articles])
            final, _ = pipeline.probe(screened)
            earlier = [r.model_copy(update={"scored_at": datetime.now(UTC) - timedelta(hours=1)})
                       for r in [*records, *final]]
            claims = await runner.dedupe.claim(earlier)
            stored = {c.key: c.payload for c in claims}
            await runner.prefilter(_inbound(articles, h.topics.raw.name))
            fwd = await h.read(h.topics.screened.name, 1, wait=1.0)
            await runner.probe(_inbound([v for _, v in fwd], h.topics.screened.name))
            out = dict(await h.read(h.topics.all_scores.name, len(stored)))
            return out, stored

    out, stored = asyncio.run(run())
    assert {k.decode() for k in out} == set(stored)
    for key, payload in out.items():
        assert payload == stored[key.decode()], "the stored record is re-emitted, not a new one"
        assert ScoreRecord.from_json(payload).scored_at < datetime.now(UTC) - timedelta(minutes=30)


def test_bad_items_go_to_the_dlq_and_the_rest_of_the_batch_flows(pipeline: Pipeline, broker, redis_server) -> None:
    demo = pipeline.filters["demo"]
    assert demo.package.has_stage2, "the demo filter has a stage-2 student"

    async def run() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            good = Escalation(article_id="esc-ok", text="A city opened a free clinic that now serves 40,000 people.",
                              filter="demo", package_hash=demo.ref.package_hash,
                              stage1_raw=[5.0] * len(demo.package.config.dimensions), stage1_estimate=5.0,
                              prefilter=PrefilterResult(passed=True))
            unknown = good.model_copy(update={"article_id": "esc-1", "filter": "no_such_filter"})
            batch = _inbound([encode(unknown), b'{"article_id": "esc-2", "text": 3}', encode(good), b"\xff"],
                             h.topics.escalated.name)
            await runner.model(batch)
            dead = await h.read(h.topics.dlq.name, 3)
            scored = await h.read(h.topics.all_scores.name, 1)
            screened_bad = _inbound([b'{"article": {"id": "s-1"}}'], h.topics.screened.name)
            await runner.probe(screened_bad)
            return dead, scored, await h.read(h.topics.dlq.name, 4)

    first, scored, everything = asyncio.run(run())
    letters = [DeadLetterRecord.parse(v) for _, v in first]
    assert sorted((d.article_id or "", d.stage, d.error_type.rsplit(".", 1)[-1]) for d in letters) == [
        ("", "model", "WireFormatError"), ("esc-1", "model", "ScoringError"), ("esc-2", "model", "WireFormatError")]
    (record,) = [ScoreRecord.from_json(v) for _, v in scored]
    assert (record.article_id, record.filter.name, record.stage.value) == ("esc-ok", "demo", "stage2")
    probe_letter = [DeadLetterRecord.parse(v) for _, v in everything if DeadLetterRecord.parse(v).stage == "probe"]
    assert [(d.article_id, d.error_type.rsplit(".", 1)[-1]) for d in probe_letter] == [("s-1", "WireFormatError")]
