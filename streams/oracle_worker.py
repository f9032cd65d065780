"""Active learning, labelling (``fluxscore worker --role oracle``): queue items through the LLM oracle.

The oracle worker reads ``active-learning.<filter>`` for every live filter, in a consumer group of its
own (``<app id>-oracle``), and asks the oracle about each :class:`~training.labels.QueueItem` with the
filter's prompt, through the oracle client (:class:`training.oracle.Oracle`: ``FLUXSCORE_ORACLE_*``
settings, concurrency and requests-per-minute limits, retries, answer schema and 0-10 range checks,
token and cost accounting). Within a micro-batch the items go best priority first. Every item ends in
one of two ways, both published on ``labels.<filter>`` (keyed by article id; the header
``fluxscore.label_status`` says which):

- **labelled**: a :class:`~training.labels.Label` (source ``oracle``, annotator the model; prompt hash,
  time, tokens, cost, package version), stored in the durable label store (``FLUXSCORE_LABELS_DB``)
  *before* it is published;
- **rejected**: an :class:`~training.oracle.OracleRejection` with the reason and every attempt's error —
  answers still malformed or out of range after ``FLUXSCORE_ORACLE_MAX_ATTEMPTS``, or an article the
  provider refuses (a 400, a blocked prompt). Rejections go to the label topic rather than the DLQ
  because they are an answer about the item, not a fault of the worker: a consumer of
  ``labels.<filter>`` sees every item end there. A Redis marker keeps a redelivered rejected item from
  being asked again (the label store holds labels only).

**Waiting, not rejecting.** When every attempt failed for the server's reasons — an outage, timeouts, a
429 storm — the item says nothing about itself: the worker waits, by the project's retry policy
(:mod:`scoring.retry`: jittered exponential backoff, the server's ``Retry-After`` honoured, capped at
``FLUXSCORE_ORACLE_MAX_WAIT``), and asks again; a 429 holds back every request of the worker (the client's
shared limiter). ``FLUXSCORE_ORACLE_WORKER_GIVE_UP`` bounds that wait per item, after which the item is
rejected with the reason. A 401/403/404 (key, permissions, model name) stops the worker without
acknowledging the batch: every further request would fail the same way.

**Nothing lost, nothing twice.** A batch's offsets are acknowledged only after each of its labels is
stored and its label (or rejection) record is acknowledged by Kafka. A redelivered item whose label is
stored already is not asked again: the stored label is published again (the same record). An item that
cannot be read (not a queue item, or for a filter this worker does not serve) is dead-lettered with its
coordinates, as the pipeline does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import TypeVar

import redis.asyncio as aioredis
from prometheus_client import Counter as PromCounter
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from scoring import retry as policy
from scoring.package import FilterPackage
from scoring.settings import ScoringSettings
from streams.agents import Inbound
from streams.app import batch_agent, build_app, faust_sender, faust_topic, register_assignment_log, run_faust
from streams.dedupe import REDIS_UNAVAILABLE
from streams.dlq import DEFAULT_MAX_PAYLOAD_BYTES, logged_dead_letter
from streams.exceptions import StreamError
from streams.kafka import ensure_topics
from streams.metrics import WAITING_FOR_KAFKA, WAITING_FOR_REDIS, StreamMetrics, ready_when_started
from streams.outbox import Message, Outbox, Sender
from streams.retry import retry_forever
from streams.selector import load_packages
from streams.settings import StreamSettings
from streams.topics import Topics
from streams.wire import RECORD_KEY_HEADER
from training.labels import LABELS, Label, LabelsSettings, LabelStore, QueueItem
from training.oracle.worker_api import Oracle, OracleRejection, OracleUnavailableError

log = logging.getLogger("fluxscore.streams.oracle")
T = TypeVar("T")
STATUS_HEADER = "fluxscore.label_status"
STAGE = "oracle"


class QueueItemError(StreamError):
    """A message on a queue topic that this worker cannot label (not a queue item, or an unserved filter)."""


def stored_labels(store: LabelStore, filter_name: str, article_ids: Sequence[str], annotator: str
                  ) -> dict[str, Label]:
    """The oracle labels this annotator already gave for these articles, by article id."""
    if not article_ids:
        return {}
    query = select(LABELS).where(LABELS.c.filter == filter_name, LABELS.c.source == "oracle",
                                 LABELS.c.annotator == annotator, LABELS.c.article_id.in_(list(article_ids)))
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    out: dict[str, Label] = {}
    for row in rows:
        label = Label.model_validate({k: v for k, v in row.items() if k != "id"})
        if label.labelled_at.tzinfo is None:
            # SQLite keeps no time zone; the label was made in UTC, and is published as it was the first time.
            label = label.model_copy(update={"labelled_at": label.labelled_at.replace(tzinfo=UTC)})
        out[label.article_id] = label
    return out


class RejectionMarks:
    """Which (filter, article) items ended rejected and were published: a redelivery is not asked again."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl: int, max_backoff: float = 5.0,
                 on_retry: Callable[[BaseException, int], None] | None = None) -> None:
        self.client, self.prefix, self.ttl = client, f"{prefix}:al:rejected", ttl
        self.max_backoff, self._on_retry = max_backoff, on_retry

    def key(self, filter_name: str, article_id: str) -> str:
        return f"{self.prefix}:{filter_name}:{article_id}"

    async def wait_ready(self) -> None:
        async def ping() -> None:
            await self.client.ping()
        await retry_forever(ping, retry_on=REDIS_UNAVAILABLE, what="Redis (ping)", max_backoff=self.max_backoff,
                            on_retry=self._on_retry)

    async def rejected(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        if not keys:
            return set()

        async def op() -> list[object]:
            return list(await self.client.mget([self.key(f, a) for f, a in keys]))

        found = await retry_forever(op, retry_on=REDIS_UNAVAILABLE, what="Redis (rejected)",
                                    max_backoff=self.max_backoff, on_retry=self._on_retry)
        return {key for key, value in zip(keys, found, strict=True) if value is not None}

    async def mark(self, keys: Sequence[tuple[str, str]]) -> None:
        if not keys:
            return

        async def op() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for f, a in keys:
                    pipe.set(self.key(f, a), "1", ex=self.ttl)
                await pipe.execute()

        await retry_forever(op, retry_on=REDIS_UNAVAILABLE, what="Redis (mark rejected)",
                            max_backoff=self.max_backoff, on_retry=self._on_retry)


class OracleMetrics:
    def __init__(self, metrics: StreamMetrics) -> None:
        r = metrics.registry
        self.items = PromCounter("fluxscore_al_labels", "Queue items by outcome (labelled, rejected, republished: "
                                 "stored before, published again; skipped: rejected before)", ["filter", "outcome"],
                                 registry=r)
        self.tokens = PromCounter("fluxscore_al_oracle_tokens", "Oracle tokens (input + output) spent on queue items",
                                  ["filter"], registry=r)
        self.cost = PromCounter("fluxscore_al_oracle_cost", "Oracle cost of queue items (the configured prices)",
                                ["filter"], registry=r)


@dataclass
class OracleRunner:
    packages: dict[str, FilterPackage]
    oracle: Oracle
    store: LabelStore
    marks: RejectionMarks
    topics: Topics
    send: Sender
    metrics: StreamMetrics
    give_up: float = 0.0
    retry_max_backoff: float = 5.0
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    worker: str = "fluxscore"
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.gauges = OracleMetrics(self.metrics)

    def _count(self, filter_name: str, outcome: str, n: int = 1) -> None:
        if n:
            self.counts[(filter_name, outcome)] += n
            self.gauges.items.labels(filter_name, outcome).inc(n)

    async def _in_store(self, op: Callable[[], T]) -> T:
        # The label store may be a database server that restarts: wait for it, as for Redis and Kafka.
        async def attempt() -> T:
            return await asyncio.to_thread(op)
        return await retry_forever(attempt, retry_on=(OperationalError,), what="label store",
                                   max_backoff=self.retry_max_backoff,
                                   on_retry=lambda exc, n: self.metrics.retries.labels("labels").inc())

    async def handle(self, batch: Sequence[Inbound]) -> None:
        self.metrics.messages_in.labels(STAGE).inc(len(batch))
        start = time.perf_counter()
        outbox = Outbox(self.send, max_backoff=self.retry_max_backoff,
                        on_retry=lambda exc, n: self.metrics.retries.labels("kafka").inc())
        items: dict[tuple[str, str], QueueItem] = {}
        for inbound in batch:
            try:
                item = QueueItem.from_json(inbound.payload)
                if item.filter not in self.packages:
                    raise QueueItemError(f"no live package for filter {item.filter!r} in this worker",
                                         article_id=item.article_id)
            except Exception as exc:
                dead = logged_dead_letter(inbound.payload, inbound.source, STAGE, exc, worker=self.worker,
                                          max_payload_bytes=self.max_payload_bytes)
                outbox.add(Message(self.topics.dlq.name, dead.key, dead.value, dead.headers))
                self.metrics.dlq.labels(STAGE, type(exc).__name__).inc()
                continue
            items.setdefault((item.filter, item.article_id), item)
        before = Counter(self.counts)
        # Stored or rejected before (a redelivery): nothing to ask.
        model = self.oracle.settings.model
        stored: dict[tuple[str, str], Label] = {}
        for filter_name in sorted({f for f, _ in items}):
            ids = [a for f, a in items if f == filter_name]
            found = await self._in_store(functools.partial(stored_labels, self.store, filter_name, ids, model))
            stored.update({(filter_name, a): label for a, label in found.items()})
        rejected = await self.marks.rejected([k for k in items if k not in stored])
        for key, label in stored.items():
            outbox.add(self._label_message(items[key], label))
            self._count(key[0], "republished")
        for key in rejected:
            self._count(key[0], "skipped")
        todo = sorted((item for key, item in items.items() if key not in stored and key not in rejected),
                      key=lambda item: -item.priority.score)
        outcomes = await asyncio.gather(*(self._label(item) for item in todo))
        labels = [(item, o) for item, o in zip(todo, outcomes, strict=True) if isinstance(o, Label)]
        rejections = [(item, o) for item, o in zip(todo, outcomes, strict=True) if isinstance(o, OracleRejection)]
        # Stored first: the batch is acknowledged only after this, so a label is never only in Kafka.
        if labels:
            await self._in_store(lambda: [self.store.add(label) for _, label in labels])
        for item, label in labels:
            outbox.add(self._label_message(item, label))
            self._count(item.filter, "labelled")
            self.gauges.tokens.labels(item.filter).inc(label.tokens or 0)
            self.gauges.cost.labels(item.filter).inc(label.cost or 0.0)
        for item, rejection in rejections:
            outbox.add(self._message(item, rejection.to_json(), "rejected"))
            self._count(item.filter, "rejected")
            self.gauges.tokens.labels(item.filter).inc(rejection.tokens)
            self.gauges.cost.labels(item.filter).inc(rejection.cost)
            log.info("item rejected", extra={"article_id": item.article_id, "filter": item.filter,
                                             "reason": rejection.reason, "attempts": rejection.attempts})
        await outbox.flush()
        await self.marks.mark([(item.filter, item.article_id) for item, _ in rejections])
        self.metrics.batch_seconds.labels(STAGE).observe(time.perf_counter() - start)
        delta = {f"{f}:{o}": n - before[(f, o)] for (f, o), n in self.counts.items() if n != before[(f, o)]}
        if delta:
            log.info("queue items labelled", extra={"counts": delta, "totals": {
                f"{f}:{o}": n for (f, o), n in sorted(self.counts.items())}})

    async def _label(self, item: QueueItem) -> Label | OracleRejection:
        package = self.packages[item.filter]
        settings = self.oracle.settings

        async def attempt() -> Label | OracleRejection:
            return await self.oracle.label_text(package, item.article_id, item.text, title=item.title)

        def on_retry(exc: BaseException, n: int) -> None:
            self.metrics.retries.labels("oracle").inc()

        # The oracle's own backoff and cap; its Retry-After (on the error) wins, as for single requests.
        initial, cap = max(settings.backoff, 0.05), max(settings.max_wait, 0.05)
        what = f"oracle (article {self.oracle.redactor.text(item.article_id)})"
        if self.give_up <= 0:
            return await policy.retry_forever(attempt, retry_on=(OracleUnavailableError,), what=what,
                                              initial=initial, max_backoff=cap, on_retry=on_retry, logger=log)
        try:
            return await policy.retry_bounded(attempt, retry_on=(OracleUnavailableError,), what=what,
                                              max_time=self.give_up, initial=initial, max_backoff=cap,
                                              on_retry=on_retry, logger=log)
        except OracleUnavailableError as exc:
            return self.oracle.rejection(package, item.article_id,
                                         f"gave up after {self.give_up:g} s: {exc.message}")

    def _label_message(self, item: QueueItem, label: Label) -> Message:
        message = self._message(item, label.to_json(), "labelled")

        def without_text(exc: BaseException) -> Message:
            # The label is stored whole; the topic gets it without the text rather than not at all.
            log.warning("label too large for the topic; published without its text",
                        extra={"article_id": item.article_id, "filter": item.filter})
            return self._message(item, label.model_copy(update={"text": ""}).to_json(), "labelled")

        message.fallback = without_text
        return message

    def _message(self, item: QueueItem, value: bytes, status: str) -> Message:
        key = item.article_id.encode()
        headers = [("fluxscore.article_id", key), ("fluxscore.filter", item.filter.encode()),
                   (RECORD_KEY_HEADER, item.record_key.encode()), (STATUS_HEADER, status.encode())]
        return Message(self.topics.labels(item.filter).name, key, value, headers)


def run_oracle_worker(settings: StreamSettings, scoring: ScoringSettings, topics: Topics, metrics: StreamMetrics,
                      name: str) -> int:
    """Runs the oracle role; ``metrics`` are already served (by :func:`streams.worker.run_worker`)."""
    from training.oracle import OracleSettings

    bootstrap, redis_url = settings.require_cluster()
    oracle_settings = OracleSettings.from_env()
    packages = load_packages(settings, scoring)
    oracle = Oracle(oracle_settings)
    for package in packages.values():
        oracle.prompt_hash(package)  # reads each prompt now: a missing one stops the worker at start
    queues = [topics.active_learning(n) for n in packages]
    outputs = [topics.labels(n) for n in packages]
    metrics.set_filters(STAGE, {n: {"version": p.version, "package_hash": p.package_hash}
                                for n, p in packages.items()})
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    metrics.set_phase(WAITING_FOR_REDIS)
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0,
                                     health_check_interval=10)
    marks = RejectionMarks(client, prefix=settings.redis_prefix, ttl=settings.dedupe_ttl,
                           max_backoff=settings.retry_max_backoff,
                           on_retry=lambda exc, n: metrics.retries.labels("redis").inc())
    loop.run_until_complete(marks.wait_ready())
    store = LabelStore(LabelsSettings.from_env().labels_db)
    metrics.set_phase(WAITING_FOR_KAFKA)
    loop.run_until_complete(ensure_topics(bootstrap, [*queues, *outputs, topics.dlq],
                                          replication=settings.replication))
    # Its own consumer group: every queue item is labelled once, whatever else reads the queues.
    app = build_app(settings.with_app_id(f"{settings.app_id}-oracle"))
    runner = OracleRunner(packages, oracle, store, marks, topics, faust_sender(app), metrics,
                          give_up=settings.oracle_worker_give_up, retry_max_backoff=settings.retry_max_backoff,
                          max_payload_bytes=settings.dead_letter_payload_bytes, worker=name)
    for filter_name, queue in zip(packages, queues, strict=True):
        app.agent(faust_topic(app, queue, settings.replication), name=f"fluxscore.oracle.{filter_name}",
                  concurrency=1)(batch_agent(runner.handle, STAGE, settings.oracle_worker_batch,
                                             settings.oracle_worker_within))
    register_assignment_log(app)
    ready_when_started(app, metrics)
    log.info("worker starting", extra={"roles": [STAGE], "consumes": [q.name for q in queues],
                                       "produces": [o.name for o in outputs], "bootstrap": bootstrap, "worker": name,
                                       "oracle": {"provider": oracle_settings.provider, "model": oracle_settings.model,
                                                  "base_url": oracle_settings.base_url},
                                       "labels_db": store.engine.url.render_as_string(hide_password=True)})
    try:
        return run_faust(app, loop, settings)
    finally:
        store.close()
