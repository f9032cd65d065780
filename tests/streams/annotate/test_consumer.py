"""``active-learning.<filter>`` on the embedded Tansu broker -> the Redis queue, once, whatever is redelivered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.annotate.app import build_app
from streams.annotate.consumer import QueueConsumer, active_learning_topic
from streams.annotate.queue import AnnotationQueue
from streams.embedded import EmbeddedBroker
from streams.kafka import ensure_topics, make_producer
from streams.settings import StreamSettings
from streams.topics import TopicSpec
from tests.streams.annotate.conftest import make_item, serve, settings_for
from training.labels import LabelStore

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    await ensure_topics(bootstrap, [TopicSpec(topic, 2)])
    # One record per batch: Tansu answers offsets wrongly for multi-record batches (see the stream tests).
    producer = make_producer(bootstrap, max_batch_bytes=1)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value=value, key=value[:8])
    finally:
        await producer.stop()


async def _committed(bootstrap: str, topic: str, group: str) -> int:
    """Messages the group has committed on ``topic``, all partitions together."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka import servers

    consumer = AIOKafkaConsumer(bootstrap_servers=servers(bootstrap), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions)]
        return sum(o or 0 for o in offsets)
    finally:
        await consumer.stop()


async def _consume_until(consumer: QueueConsumer, done: Callable[[], bool], timeout: float = 60.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert time.monotonic() < deadline, f"consumer did not finish: {consumer.counts}"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def test_items_land_in_the_queue_once(broker: EmbeddedBroker, make_queue: Callable[..., AnnotationQueue],
                                      store: LabelStore, redis_url_: str, tmp_path: Path, prefix: str) -> None:
    queue = make_queue()
    stream = StreamSettings(kafka_bootstrap=broker.bootstrap, topic_prefix=f"{prefix}.", session_timeout=3,
                            heartbeat_interval=0.5, rebalance_timeout=6, retry_max_backoff=0.5)
    topic = active_learning_topic(stream, "demo").name
    a, b = make_item("a1", 0.8), make_item("b1", 0.3)
    # b1 twice (a producer's retry), a message of another filter, and one that is not a queue item.
    values = [a.to_json(), b.to_json(), b.to_json(), make_item("x", 0.5, filter="demo_tech").to_json(), b"{oops"]
    asyncio.run(_produce(broker.bootstrap, topic, values))

    first = QueueConsumer(queue, stream, group=f"{prefix}-g", filters=["demo"])
    asyncio.run(_consume_until(first, lambda: first.counts.committed >= len(values)))
    assert first.counts.outcomes == {"added": 2, "present": 1, "foreign": 1, "invalid": 1}
    assert queue.counts("demo") == (2, 0)
    assert queue.counts("demo_tech") == (0, 0)
    assert asyncio.run(_committed(broker.bootstrap, topic, f"{prefix}-g")) == len(values)

    # b1 is labelled and leaves the queue; then everything is delivered again (a new group reads from the start).
    leased = queue.next("demo", "ann")
    assert leased is not None and leased.item.article_id == "a1"
    queue.skip("demo", "ann", "a1")
    leased = queue.next("demo", "ann")
    assert leased is not None and leased.item.article_id == "b1"
    queue.submit("demo", "ann", "b1", {"impact": 1, "evidence": 2, "novelty": 3})
    # The service itself (build_app, as `fluxscore annotate serve` runs it) consumes in a new group.
    service = serve(build_app(settings_for(redis_url_, tmp_path / "labels.db", prefix, group=f"{prefix}-g2"),
                              stream=stream))
    try:
        deadline = time.monotonic() + 60
        while asyncio.run(_committed(broker.bootstrap, topic, f"{prefix}-g2")) < len(values):
            assert time.monotonic() < deadline, "the service's consumer did not commit the topic"
            time.sleep(0.5)
    finally:
        service.stop()
    assert queue.counts("demo") == (1, 0)
    assert queue.item("demo", "a1").priority.score == 0.8
    assert [lb.article_id for lb in store.labels("demo")] == ["b1"]
