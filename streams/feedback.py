"""Feedback (``fluxscore worker --role feedback``): engagement and corrections into the label store.

Downstream consumers of the score topics publish what happened to an article on ``feedback.<filter>``
(:mod:`training.feedback` has the event format: article id, event, weight, time, and a person's scores for
a ``correction``). This role reads those topics for every live filter, in a consumer group of its own
(``<app id>-feedback``), validates each event and stores it in the label database
(``FLUXSCORE_LABELS_DB``), where the ``feedback`` initiative of ``fluxscore evolve`` reads it.

**Nothing lost, nothing twice.** A batch is acknowledged only after its events are stored; an event is
stored once per event id (or, without one, per topic/partition/offset), so a redelivered batch adds
nothing. An event that cannot be read (not JSON, a field missing or out of range, a time without a zone,
a correction naming a dimension the filter does not have) is dead-lettered with the reason and its
coordinates, as the pipeline does with bad input; the label database being down is waited out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import Counter as PromCounter
from sqlalchemy.exc import OperationalError

from scoring.package import FilterPackage
from scoring.settings import ScoringSettings
from streams.agents import Inbound
from streams.app import batch_agent, build_app, faust_sender, faust_topic, register_assignment_log, run_faust
from streams.dlq import DEFAULT_MAX_PAYLOAD_BYTES, logged_dead_letter
from streams.exceptions import StreamError
from streams.kafka import ensure_topics
from streams.metrics import WAITING_FOR_KAFKA, StreamMetrics, ready_when_started
from streams.outbox import Message, Outbox, Sender
from streams.retry import retry_forever
from streams.settings import StreamSettings
from streams.topics import Topics
from training.feedback import FeedbackEvent, FeedbackEventError, event_key
from training.labels import LabelsSettings, LabelStore

log = logging.getLogger("fluxscore.streams.feedback")
T = TypeVar("T")
STAGE = "feedback"
# Events are small and storing them is one insert per batch: large batches, a short deadline.
BATCH_SIZE = 256
BATCH_WITHIN = 1.0


class FeedbackTopicError(StreamError):
    """A message on a topic this worker reads for no live filter."""


@dataclass
class FeedbackRunner:
    packages: dict[str, FilterPackage]
    store: LabelStore
    topics: Topics
    send: Sender
    metrics: StreamMetrics
    retry_max_backoff: float = 5.0
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    worker: str = "fluxscore"
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.by_topic = {self.topics.feedback(name).name: name for name in self.packages}
        self.events = PromCounter("fluxscore_feedback_events", "Feedback events by outcome (stored; duplicate: "
                                  "stored before, a redelivery; dead: dead-lettered)", ["filter", "outcome"],
                                  registry=self.metrics.registry)

    def _count(self, filter_name: str, outcome: str, n: int = 1) -> None:
        if n:
            self.counts[(filter_name, outcome)] += n
            self.events.labels(filter_name, outcome).inc(n)

    async def _in_store(self, op: Callable[[], T]) -> T:
        # The label store may be a database server that restarts: wait for it, as for Kafka.
        async def attempt() -> T:
            return await asyncio.to_thread(op)
        return await retry_forever(attempt, retry_on=(OperationalError,), what="label store",
                                   max_backoff=self.retry_max_backoff,
                                   on_retry=lambda exc, n: self.metrics.retries.labels("labels").inc())

    def read(self, inbound: Inbound) -> tuple[str, FeedbackEvent]:
        """(filter, event) of one message, or the error that dead-letters it."""
        filter_name = self.by_topic.get(inbound.source.topic)
        if filter_name is None:
            raise FeedbackTopicError(f"topic {inbound.source.topic!r} is not the feedback topic of a live filter "
                                     f"of this worker ({', '.join(sorted(self.by_topic))})")
        event = FeedbackEvent.parse(inbound.payload)
        if event.scores:
            package = self.packages[filter_name]
            unknown = sorted(set(event.scores) - set(package.config.dimension_names))
            if unknown:
                raise FeedbackEventError(f"correction names dimensions {unknown} that {package.ref} does not have "
                                         f"({', '.join(package.config.dimension_names)})", article_id=event.article_id)
        return filter_name, event

    async def handle(self, batch: Sequence[Inbound]) -> None:
        self.metrics.messages_in.labels(STAGE).inc(len(batch))
        start = time.perf_counter()
        outbox = Outbox(self.send, max_backoff=self.retry_max_backoff,
                        on_retry=lambda exc, n: self.metrics.retries.labels("kafka").inc())
        good: dict[str, list[tuple[FeedbackEvent, str]]] = {}
        for inbound in batch:
            try:
                filter_name, event = self.read(inbound)
            except Exception as exc:
                dead = logged_dead_letter(inbound.payload, inbound.source, STAGE, exc, worker=self.worker,
                                          max_payload_bytes=self.max_payload_bytes)
                outbox.add(Message(self.topics.dlq.name, dead.key, dead.value, dead.headers))
                self.metrics.dlq.labels(STAGE, type(exc).__name__).inc()
                self._count(self.by_topic.get(inbound.source.topic, "?"), "dead")
                continue
            src = inbound.source
            good.setdefault(filter_name, []).append((event, event_key(event, src.topic, src.partition, src.offset)))
        # Stored before the batch is acknowledged (the agent acks after this returns): never only in Kafka.
        for filter_name, events in good.items():
            added = await self._in_store(functools.partial(self.store.add_feedback, filter_name, events))
            self._count(filter_name, "stored", added)
            self._count(filter_name, "duplicate", len(events) - added)
        await outbox.flush()
        self.metrics.batch_seconds.labels(STAGE).observe(time.perf_counter() - start)
        if good:
            log.info("feedback stored", extra={"totals": {f"{f}:{o}": n for (f, o), n in sorted(self.counts.items())}})


def run_feedback_worker(settings: StreamSettings, scoring: ScoringSettings, topics: Topics, metrics: StreamMetrics,
                        name: str) -> int:
    """Runs the feedback role; ``metrics`` are already served (by :func:`streams.worker.run_worker`)."""
    from streams.selector import load_packages

    bootstrap, _ = settings.require_cluster()
    packages = load_packages(settings, scoring)
    inputs = [topics.feedback(n) for n in packages]
    metrics.set_filters(STAGE, {n: {"version": p.version, "package_hash": p.package_hash}
                                for n, p in packages.items()})
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    store = LabelStore(LabelsSettings.from_env().labels_db)
    metrics.set_phase(WAITING_FOR_KAFKA)
    loop.run_until_complete(ensure_topics(bootstrap, [*inputs, topics.dlq], replication=settings.replication))
    # Its own consumer group: every event is stored, whatever else reads the feedback topics.
    app = build_app(settings.with_app_id(f"{settings.app_id}-feedback"))
    runner = FeedbackRunner(packages, store, topics, faust_sender(app), metrics,
                            retry_max_backoff=settings.retry_max_backoff,
                            max_payload_bytes=settings.dead_letter_payload_bytes, worker=name)
    for filter_name, topic in zip(packages, inputs, strict=True):
        app.agent(faust_topic(app, topic, settings.replication), name=f"fluxscore.feedback.{filter_name}",
                  concurrency=1)(batch_agent(runner.handle, STAGE, BATCH_SIZE, BATCH_WITHIN))
    register_assignment_log(app)
    ready_when_started(app, metrics)
    log.info("worker starting", extra={"roles": [STAGE], "consumes": [t.name for t in inputs], "bootstrap": bootstrap,
                                       "worker": name,
                                       "labels_db": store.engine.url.render_as_string(hide_password=True)})
    try:
        return run_faust(app, loop, settings)
    finally:
        store.close()
