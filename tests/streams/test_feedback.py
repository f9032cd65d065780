"""The feedback role's batch handling with a real (SQLite) label store and a recording sender in place of
Kafka: good events are stored once (a redelivered batch adds nothing), bad ones are dead-lettered with the
reason and their coordinates."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from scoring.package import FilterPackage
from streams.agents import Inbound
from streams.dlq import DeadLetterRecord, Source
from streams.feedback import FeedbackRunner
from streams.metrics import StreamMetrics
from streams.settings import StreamSettings
from streams.topics import Topics
from tests.streams.conftest import Sent
from training.labels import LabelStore

pytestmark = pytest.mark.timeout(60)



def _runner(package: FilterPackage, tmp_path: Path) -> tuple[FeedbackRunner, Sent, LabelStore]:
    sent: Sent = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None) -> Any:
        sent.append((topic, key, value, list(headers or [])))
        done = asyncio.get_running_loop().create_future()   # what the producer hands back: Kafka's ack
        done.set_result(None)
        return done

    store = LabelStore(tmp_path / "labels.db")
    topics = Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_PREFIX": "t-"}))
    return FeedbackRunner({"toy": package}, store, topics, send, StreamMetrics()), sent, store


def _batch(*payloads: bytes, topic: str = "t-feedback.toy", first: int = 0) -> list[Inbound]:
    return [Inbound(p, Source(topic, 1, first + i, b"k")) for i, p in enumerate(payloads)]


def _event(article_id: str, event: str = "click", **extra: object) -> bytes:
    return orjson.dumps({"article_id": article_id, "event": event, "weight": 1.0, "at": "2026-12-01T10:00:00Z",
                         **extra})


def test_topic_names() -> None:
    topics = Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_PREFIX": "t-"}))
    assert topics.feedback("toy").name == "t-feedback.toy"
    assert topics.feedback("toy").partitions == topics.queue_partitions


def test_events_are_stored_once_and_bad_ones_dead_lettered(package: FilterPackage, tmp_path: Path) -> None:
    runner, sent, store = _runner(package, tmp_path)
    good = [_event("a1", "share", weight=3.0), _event("a2", "correction", scores={"alpha": 7.0}),
            _event("a3", id="ev-1"), _event("a3", id="ev-1")]            # the same event id twice: one event
    bad = [b"not json", _event("a4", at="2026-12-01T10:00:00"),       # no time zone
           _event("a5", "correction"),                                 # a correction without scores
           _event("a6", "correction", scores={"gamma": 2.0}),          # a dimension toy does not have
           _event("a7", weight=-1.0)]
    batch = _batch(*good, *bad)
    asyncio.run(runner.handle(batch))
    stored = store.feedback("toy")
    assert sorted(s.event.article_id for s in stored) == ["a1", "a2", "a3"]
    assert {s.event.article_id: s.event.scores for s in stored}["a2"] == {"alpha": 7.0}
    assert runner.counts[("toy", "stored")] == 3 and runner.counts[("toy", "duplicate")] == 1
    dead = [DeadLetterRecord.parse(value, headers) for topic, _, value, headers in sent]
    assert {topic for topic, *_ in sent} == {runner.topics.dlq.name}
    assert [d.source.offset for d in dead] == [4, 5, 6, 7, 8]
    assert all(d.stage == "feedback" and d.source.topic == "t-feedback.toy" for d in dead)
    reasons = [d.message for d in dead]
    assert "time zone" in reasons[1] and "correction needs scores" in reasons[2]
    assert "['gamma']" in reasons[3] and "weight" in reasons[4]
    assert [d.article_id for d in dead] == [None, "a4", "a5", "a6", "a7"]
    # A redelivery of the batch (same offsets) stores nothing new.
    asyncio.run(runner.handle(batch))
    assert len(store.feedback("toy")) == 3 and runner.counts[("toy", "duplicate")] == 5


def test_a_topic_of_no_live_filter_is_dead_lettered(package: FilterPackage, tmp_path: Path) -> None:
    runner, sent, store = _runner(package, tmp_path)
    asyncio.run(runner.handle(_batch(_event("a1"), topic="t-feedback.other")))
    assert store.feedback("toy") == [] and store.feedback("other") == []
    record = DeadLetterRecord.parse(sent[0][2], sent[0][3])
    assert "not the feedback topic of a live filter" in record.message and record.article_id == "a1"
