"""``active-learning.<filter>`` -> the Redis annotation queue, committing offsets only once an item is in Redis.

The consumer reads in its own group (``FLUXSCORE_ANNOTATE_GROUP``), with auto-commit off: a batch's
offsets are committed after every item of it is in Redis (or was refused for good), so a crash re-reads
the batch, and :meth:`~streams.annotate.queue.AnnotationQueue.add` makes the re-read harmless (an item
queued already, or labelled by enough people, is not added again). Redis or database outages are waited
out with backoff; one unreadable message is logged with its coordinates and passed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from streams.annotate.exceptions import AnnotateError
from streams.annotate.queue import AnnotationQueue
from streams.dedupe import REDIS_UNAVAILABLE
from streams.exceptions import BrokerUnavailableError
from streams.kafka import ensure_topics, servers
from streams.retry import retry_forever
from streams.settings import StreamSettings
from streams.topics import Topics, TopicSpec
from training.labels import QueueItem

log = logging.getLogger("fluxscore.streams.annotate")
_UNAVAILABLE = (*REDIS_UNAVAILABLE, OperationalError)


def active_learning_topic(stream: StreamSettings, filter_name: str) -> TopicSpec:
    """``<prefix>active-learning.<filter>``, named by :mod:`streams.topics` as the selector names it."""
    return Topics.from_settings(stream).active_learning(filter_name)


@dataclass
class ConsumerCounts:
    """What the consumer did, for logs and tests."""

    seen: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    committed: int = 0

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


class QueueConsumer:
    """Moves queue items from the active-learning topics of ``filters`` into ``queue``."""

    def __init__(self, queue: AnnotationQueue, stream: StreamSettings, *, group: str,
                 filters: Sequence[str] | None = None, create_topics: bool = True) -> None:
        if not stream.kafka_bootstrap:
            raise AnnotateError("the queue consumer needs FLUXSCORE_KAFKA_BOOTSTRAP (or KAFKA_BOOTSTRAP)")
        self.queue = queue
        self.stream = stream
        self.bootstrap = stream.kafka_bootstrap
        self.group = group
        names = tuple(filters or queue.filters)
        self.specs = [active_learning_topic(stream, f) for f in names]
        self.topics: Mapping[str, str] = {spec.name: f for spec, f in zip(self.specs, names, strict=True)}
        self.create_topics = create_topics
        self.counts = ConsumerCounts()
        self.ready = asyncio.Event()  # set once partitions are assigned (tests wait on it)

    def _consumer(self) -> AIOKafkaConsumer:
        # Not streams.kafka.make_consumer: that one auto-commits for a group, which could commit offsets
        # of items not yet in Redis. Here every commit follows the writes it covers.
        s = self.stream
        return AIOKafkaConsumer(
            *self.topics, bootstrap_servers=servers(self.bootstrap), group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest", metadata_max_age_ms=5000,
            session_timeout_ms=int(s.session_timeout * 1000), heartbeat_interval_ms=int(s.heartbeat_interval * 1000),
            rebalance_timeout_ms=int(s.rebalance_timeout * 1000), max_poll_records=200)

    def _handle(self, topic: str, partition: int, offset: int, value: bytes | None) -> str:
        """Queue one message; the outcome (``added``, ``present``, ``labelled``, ``invalid``, ``foreign``)."""
        where = {"topic": topic, "partition": partition, "offset": offset}
        try:
            item = QueueItem.from_json(value or b"")
        except (ValidationError, ValueError) as exc:
            log.warning("unreadable queue item passed over", extra={**where, "error": str(exc)[:500]})
            return "invalid"
        expected = self.topics.get(topic)
        if item.filter != expected:
            log.warning("queue item of another filter passed over",
                        extra={**where, "filter": item.filter, "expected": expected, "article_id": item.article_id})
            return "foreign"
        try:
            return self.queue.add(item)
        except AnnotateError as exc:  # e.g. an article id longer than the label store keeps
            log.warning("queue item refused", extra={**where, "article_id": item.article_id, "error": str(exc)})
            return "invalid"

    async def _handle_retrying(self, topic: str, partition: int, offset: int, value: bytes | None) -> str:
        # A coroutine function, not a lambda returning a coroutine: the retry policy (tenacity) awaits only
        # what it recognises as async.
        async def op() -> str:
            return await asyncio.to_thread(self._handle, topic, partition, offset, value)

        return await retry_forever(op, retry_on=_UNAVAILABLE, what="redis or the label store",
                                   max_backoff=self.stream.retry_max_backoff)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; a broker outage is waited out, never fatal to the service."""
        create = self.create_topics
        while not stop.is_set():
            consumer: AIOKafkaConsumer | None = None
            try:
                if create:
                    await ensure_topics(self.bootstrap, self.specs, replication=self.stream.replication)
                    create = False
                consumer = self._consumer()
                await consumer.start()
                await self._loop(consumer, stop)
            except (KafkaError, BrokerUnavailableError, OSError) as exc:
                log.warning("queue consumer: broker unavailable, retrying", extra={"error": str(exc)[:300]})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.stream.retry_max_backoff)
            finally:
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await consumer.stop()

    async def _loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        log.info("queue consumer started", extra={"topics": sorted(self.topics), "group": self.group})
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            if consumer.assignment():
                self.ready.set()
            offsets: dict[TopicPartition, int] = {}
            for tp, messages in batches.items():
                for msg in messages:
                    outcome = await self._handle_retrying(msg.topic, msg.partition, msg.offset, msg.value)
                    self.counts.seen += 1
                    self.counts.count(outcome)
                    offsets[tp] = msg.offset + 1
            if offsets:
                await consumer.commit(offsets)
                self.counts.committed += sum(len(m) for m in batches.values())
                log.info("queue items consumed", extra={"messages": sum(len(m) for m in batches.values()),
                                                        "outcomes": dict(self.counts.outcomes)})
