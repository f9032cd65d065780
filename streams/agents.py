"""What each agent does with one micro-batch: decode, call the pipeline stage, route, emit, dead-letter.

Transport-free except for an injected :data:`~streams.outbox.Sender`, so the same logic runs under
Faust and in tests. Every handler returns only after everything the batch produced has been
acknowledged by Kafka; the caller then acknowledges the batch's input offsets (at-least-once).

- prefilter: raw bytes -> :class:`Article` (invalid ones to the DLQ) -> ``Pipeline.screen`` ->
  blocked pairs are final records; the rest go to ``articles.screened``.
- probe: ``Screened`` -> ``Pipeline.probe`` (one embedding per article, every filter's probe) ->
  final records below each filter's threshold, :class:`Escalation` items to ``articles.escalated``.
- model: ``Escalation`` -> ``Pipeline.escalate`` (students, grouped by adapter) -> final records.

Final records pass through :class:`~streams.dedupe.DedupeStore` first: a key scored before is
re-emitted as stored (never a second, different record) or skipped when it was already delivered.
The key includes the hash of the scored text, so an article re-published under its id with edited text
is a new key, scored again, whose record names the one it supersedes. What is published is the record's
:meth:`~scoring.records.ScoreRecord.stable` form (no times in the body), so a rescoring after Redis lost
its keys yields the same bytes.

One item, one fate: any exception raised while handling one consumed message (decoding it, scoring
it, encoding what it produces) dead-letters that message with its coordinates; the rest of the batch
goes on. An article is either forwarded and scored, or dead-lettered — never both: its forwards are
sent first, and only the articles whose forwards Kafka accepted get their final records.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from scoring.article import DEFAULT_LIMITS, Article, Limits, parse_article
from scoring.isolate import isolate
from scoring.pipeline import Escalation, Pipeline, Screened
from scoring.records import RecordKey, ScoreRecord, text_hash
from streams.dedupe import Claim, DedupeStore
from streams.dlq import DEFAULT_MAX_PAYLOAD_BYTES, DeadLetter, Source, logged_dead_letter
from streams.exceptions import MessageTooLargeError
from streams.metrics import StreamMetrics
from streams.outbox import Message, Outbox, Sender
from streams.topics import Topics
from streams.wire import RECORD_KEY_HEADER, decode_escalation, decode_screened, encode, encode_screened

log = logging.getLogger("fluxscore.streams.agents")
T = TypeVar("T")
R = TypeVar("R")

PREFILTER, PROBE, MODEL = "prefilter", "probe", "model"


@dataclass(frozen=True)
class Inbound:
    """One consumed message."""

    payload: bytes
    source: Source


@dataclass
class StageRunner:
    pipeline: Pipeline
    topics: Topics
    dedupe: DedupeStore
    send: Sender
    metrics: StreamMetrics
    limits: Limits = DEFAULT_LIMITS
    # The largest value a forward may have: what the producer and the broker accept, less headers.
    max_message_bytes: int = 1_048_576 - 16_384
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    retry_max_backoff: float = 5.0
    worker: str = "fluxscore"
    # The pipeline is not thread-safe: one scoring thread per worker serialises every stage and reloads,
    # and keeps the event loop free for heartbeats while models run.
    executor: Executor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="scoring"))
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    async def in_thread(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    # -- the three stages ----------------------------------------------------------------------------

    async def prefilter(self, batch: Sequence[Inbound]) -> None:
        start = self._begin(PREFILTER, batch)
        dead: list[DeadLetter] = []
        articles: list[Article] = []
        origin: dict[str, Inbound] = {}
        for item in batch:
            try:
                article = parse_article(item.payload, limits=self.limits)
            except Exception as exc:
                dead.append(self._dead(PREFILTER, item, exc))
                continue
            articles.append(article)
            origin.setdefault(article.id, item)
        t0 = time.perf_counter()
        outputs, failed = await self.in_thread(isolate, self.pipeline.screen, articles)
        self.metrics.stage_seconds.labels(PREFILTER).observe(time.perf_counter() - t0)
        failures: dict[str, BaseException] = {articles[i].id: exc for i, exc in failed}
        forwards: dict[str, list[Message]] = {}
        for _, screened in outputs:
            for s in screened:
                self._add_forward(forwards, failures, PREFILTER, self.topics.screened.name, s.article.id,
                                  functools.partial(encode_screened, s))
        records = [r for recs, _ in outputs for r in recs]
        await self._finish(PREFILTER, batch, records, [], forwards, failures, origin, dead, start)

    async def probe(self, batch: Sequence[Inbound]) -> None:
        start = self._begin(PROBE, batch)
        dead: list[DeadLetter] = []
        screened: list[Screened] = []
        origin: dict[str, Inbound] = {}
        for item in batch:
            try:
                s = decode_screened(item.payload)
            except Exception as exc:
                dead.append(self._dead(PROBE, item, exc))
                continue
            screened.append(s)
            origin.setdefault(s.article.id, item)
        t0 = time.perf_counter()
        outputs, failed = await self.in_thread(isolate, self.pipeline.probe, screened)
        self.metrics.stage_seconds.labels(PROBE).observe(time.perf_counter() - t0)
        failures: dict[str, BaseException] = {screened[i].article.id: exc for i, exc in failed}
        records = [r for recs, _ in outputs for r in recs]
        escalations = [e for _, escs in outputs for e in escs]
        probed = Counter(r.filter.name for r in records)
        escalated = Counter(e.filter for e in escalations)
        self.metrics.count_probe(dict(probed + escalated), dict(escalated))
        forwards: dict[str, list[Message]] = {}
        for e in escalations:
            self._add_forward(forwards, failures, PROBE, self.topics.escalated.name, e.article_id,
                              functools.partial(encode, e))
        await self._finish(PROBE, batch, records, [], forwards, failures, origin, dead, start)

    async def model(self, batch: Sequence[Inbound]) -> None:
        start = self._begin(MODEL, batch)
        dead: list[DeadLetter] = []
        keys: dict[RecordKey, Escalation] = {}
        origin: dict[tuple[str, str], Inbound] = {}
        for item in batch:
            try:
                e = decode_escalation(item.payload)
                # Its parts come off the wire: one that cannot form a record key costs this item only.
                key = self._live_key(e)
            except Exception as exc:
                dead.append(self._dead(MODEL, item, exc))
                continue
            keys[key] = e
            origin.setdefault((e.article_id, e.filter), item)
        # A redelivered escalation whose record exists costs a Redis lookup, not a student forward pass.
        known = await self.dedupe.lookup(list(keys))
        todo = [e for key, e in keys.items() if key not in known]
        t0 = time.perf_counter()
        outputs, failed = await self.in_thread(isolate, self.pipeline.escalate, todo)
        self.metrics.stage_seconds.labels(MODEL).observe(time.perf_counter() - t0)
        dead.extend(self._dead(MODEL, origin[(todo[i].article_id, todo[i].filter)], exc) for i, exc in failed)
        records = [r for recs in outputs for r in recs]
        await self._finish(MODEL, batch, records, list(known.values()), {}, {}, {}, dead, start)

    # -- shared plumbing -----------------------------------------------------------------------------

    def _live_key(self, e: Escalation) -> RecordKey:
        """The key the record of ``e`` will have: that of the live package version, for the text it carries."""
        live = self.pipeline.filters.get(e.filter)
        return RecordKey(e.article_id, e.filter, live.ref.package_hash if live else e.package_hash, text_hash(e.text))

    def _begin(self, stage: str, batch: Sequence[Inbound]) -> float:
        self.metrics.messages_in.labels(stage).inc(len(batch))
        self.metrics.batch_size.labels(stage).observe(len(batch))
        return time.perf_counter()

    def _dead(self, stage: str, item: Inbound, exc: BaseException) -> DeadLetter:
        return logged_dead_letter(item.payload, item.source, stage, exc, worker=self.worker,
                                  max_payload_bytes=self.max_payload_bytes)

    def _dlq_message(self, dead: DeadLetter) -> Message:
        return Message(self.topics.dlq.name, dead.key, dead.value, dead.headers)

    def _add_forward(self, forwards: dict[str, list[Message]], failures: dict[str, BaseException], stage: str,
                     topic: str, article_id: str, value: Callable[[], bytes]) -> None:
        """Queue one forward of an article, or mark the article failed if it cannot be encoded or sent."""
        if article_id in failures:
            return
        try:
            payload = value()
        except Exception as exc:  # e.g. a value the JSON encoder refuses
            failures[article_id] = exc
            return
        if len(payload) > self.max_message_bytes:
            # Known before sending: dead-letter the article now rather than learn it from the broker.
            failures[article_id] = MessageTooLargeError(
                f"the message for {topic} would be {len(payload)} bytes, above the limit of "
                f"{self.max_message_bytes} bytes", topic=topic, article_id=article_id, stage=stage)
            return
        forwards.setdefault(article_id, []).append(Message(topic, article_id.encode(), payload))

    async def _finish(self, stage: str, batch: Sequence[Inbound], records: list[ScoreRecord], known: list[Claim],
                      forwards: dict[str, list[Message]], failures: dict[str, BaseException],
                      origin: dict[str, Inbound], dead: list[DeadLetter], start: float) -> None:
        outbox = Outbox(self.send, max_backoff=self.retry_max_backoff,
                        on_retry=lambda exc, n: self.metrics.retries.labels("kafka").inc())
        # Phase 1: forwards, and the dead letters known so far. A forward the broker refuses for good
        # (its own limit may be lower than ours) turns its article into a dead letter, before any of
        # that article's final records exist.
        refused: dict[str, BaseException] = {}
        for article_id, messages in forwards.items():
            if article_id in failures:
                continue
            for message in messages:
                message.fallback = functools.partial(self._refused, stage, article_id, origin, refused)
                outbox.add(message)
        for article_id, exc in failures.items():
            dead.append(self._dead(stage, origin[article_id], exc))
        for letter in dead:
            outbox.add(self._dlq_message(letter))
        delivered = await outbox.flush()
        lost = failures.keys() | refused.keys()
        # Phase 2: the final records of every article that is not dead-lettered.
        records = [r for r in records if r.article_id not in lost]
        claims = [*known, *await self.dedupe.claim([r.stable() for r in records])]
        volatile = {r.record_key: r.volatile_headers() for r in records}
        emitted: list[Claim] = []
        seen: set[RecordKey] = set()
        repeats = Counter[str]()
        now = datetime.now(UTC).isoformat().encode()
        for claim in claims:
            if claim.key in seen:
                continue
            seen.add(claim.key)
            if claim.sent:
                repeats["skipped"] += 1
                continue
            extra = volatile.get(claim.key, []) if claim.fresh else [("fluxscore.reemitted_at", now)]
            if not claim.fresh:
                repeats["re-emitted"] += 1
            kafka_key = claim.key.article_id.encode()
            headers = [("fluxscore.article_id", kafka_key), ("fluxscore.filter", claim.filter.encode()),
                       (RECORD_KEY_HEADER, claim.key.encode()), *extra]
            for topic in (self.topics.scores(claim.filter).name, self.topics.all_scores.name):
                outbox.add(Message(topic, kafka_key, claim.payload, headers))
            emitted.append(claim)
        delivered += await outbox.flush()
        await self.dedupe.mark_sent([c.key for c in emitted])
        if repeats:
            for action, n in repeats.items():
                self.metrics.duplicates.labels(stage, action).inc(n)
            log.info("records scored before (redelivery)", extra={"stage": stage, **repeats})

        stage_of = {r.record_key: r.stage.value for r in records}
        for claim in emitted:
            used = stage_of.get(claim.key) or str(orjson.loads(claim.payload)["stage"])
            self.metrics.records_out.labels(claim.filter, used).inc()
        for message in delivered:
            if message.topic == self.topics.dlq.name:
                error_type = dict(message.headers or []).get("fluxscore.error.type", b"?").decode()
                self.metrics.dlq.labels(stage, error_type.rsplit(".", 1)[-1]).inc()
            elif message.topic in (self.topics.screened.name, self.topics.escalated.name):
                self.metrics.forwarded.labels(stage, message.topic).inc()
        for item in batch:
            tp = (item.source.topic, item.source.partition)
            self.next_offsets[tp] = max(self.next_offsets.get(tp, 0), item.source.offset + 1)
        self.metrics.batch_seconds.labels(stage).observe(time.perf_counter() - start)
        log.debug("batch done", extra={"stage": stage, "size": len(batch), "records": len(emitted),
                                       "forwarded": sum(map(len, forwards.values())), "dead": len(dead)})

    def _refused(self, stage: str, article_id: str, origin: dict[str, Inbound], refused: dict[str, BaseException],
                 exc: BaseException) -> Message | None:
        """The fallback of a refused forward: the article's dead letter, once per article."""
        if article_id in refused:
            return None  # another forward of this article was refused already and carries its dead letter
        refused[article_id] = exc
        return self._dlq_message(self._dead(stage, origin[article_id], exc))
