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
from typing import Any, TypeVar

import orjson

from scoring.article import Article, parse_article
from scoring.exceptions import ArticleValidationError
from scoring.pipeline import Escalation, Pipeline, Screened
from scoring.records import ScoreRecord, record_key
from streams.dedupe import Claim, DedupeStore
from streams.dlq import DEFAULT_MAX_PAYLOAD_BYTES, DeadLetter, Source, build_dead_letter
from streams.exceptions import WireFormatError
from streams.metrics import StreamMetrics
from streams.outbox import Message, Outbox, Sender
from streams.topics import Topics
from streams.wire import RECORD_KEY_HEADER, decode_escalation, decode_screened, encode

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
    max_content_bytes: int = 1_000_000
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
                article = parse_article(item.payload, max_content_bytes=self.max_content_bytes)
            except ArticleValidationError as exc:
                dead.append(self._dead(PREFILTER, item, exc))
                continue
            articles.append(article)
            origin.setdefault(article.id, item)
        t0 = time.perf_counter()
        outputs, failed = await self._isolated(self.pipeline.screen, articles)
        self.metrics.stage_seconds.labels(PREFILTER).observe(time.perf_counter() - t0)
        dead.extend(self._dead(PREFILTER, origin[articles[i].id], exc) for i, exc in failed)
        records = [r for recs, _ in outputs for r in recs]
        forwards = [self._forward(PREFILTER, self.topics.screened.name, s.article.id, encode(s), origin[s.article.id])
                    for _, screened in outputs for s in screened]
        await self._finish(PREFILTER, batch, records, [], forwards, dead, start)

    async def probe(self, batch: Sequence[Inbound]) -> None:
        start = self._begin(PROBE, batch)
        dead: list[DeadLetter] = []
        screened: list[Screened] = []
        origin: dict[str, Inbound] = {}
        for item in batch:
            try:
                s = decode_screened(item.payload)
            except WireFormatError as exc:
                dead.append(self._dead(PROBE, item, exc))
                continue
            screened.append(s)
            origin.setdefault(s.article.id, item)
        t0 = time.perf_counter()
        outputs, failed = await self._isolated(self.pipeline.probe, screened)
        self.metrics.stage_seconds.labels(PROBE).observe(time.perf_counter() - t0)
        dead.extend(self._dead(PROBE, origin[screened[i].article.id], exc) for i, exc in failed)
        records = [r for recs, _ in outputs for r in recs]
        escalations = [e for _, escs in outputs for e in escs]
        probed = Counter(r.filter.name for r in records)
        escalated = Counter(e.filter for e in escalations)
        self.metrics.count_probe(dict(probed + escalated), dict(escalated))
        forwards = [self._forward(PROBE, self.topics.escalated.name, e.article_id, encode(e), origin[e.article_id])
                    for e in escalations]
        await self._finish(PROBE, batch, records, [], forwards, dead, start)

    async def model(self, batch: Sequence[Inbound]) -> None:
        start = self._begin(MODEL, batch)
        dead: list[DeadLetter] = []
        escalations: list[Escalation] = []
        origin: dict[tuple[str, str], Inbound] = {}
        for item in batch:
            try:
                e = decode_escalation(item.payload)
            except WireFormatError as exc:
                dead.append(self._dead(MODEL, item, exc))
                continue
            escalations.append(e)
            origin.setdefault((e.article_id, e.filter), item)
        # A redelivered escalation whose record exists costs a Redis lookup, not a student forward pass.
        keys = {self._live_key(e): e for e in escalations}
        known = await self.dedupe.lookup(list(keys))
        todo = [e for key, e in keys.items() if key not in known]
        t0 = time.perf_counter()
        outputs, failed = await self._isolated(self.pipeline.escalate, todo)
        self.metrics.stage_seconds.labels(MODEL).observe(time.perf_counter() - t0)
        dead.extend(self._dead(MODEL, origin[(todo[i].article_id, todo[i].filter)], exc) for i, exc in failed)
        records = [r for recs in outputs for r in recs]
        await self._finish(MODEL, batch, records, list(known.values()), [], dead, start)

    # -- shared plumbing -----------------------------------------------------------------------------

    def _live_key(self, e: Escalation) -> str:
        live = self.pipeline.filters.get(e.filter)
        return record_key(e.article_id, e.filter, live.ref.package_hash if live else e.package_hash)

    def _begin(self, stage: str, batch: Sequence[Inbound]) -> float:
        self.metrics.messages_in.labels(stage).inc(len(batch))
        self.metrics.batch_size.labels(stage).observe(len(batch))
        return time.perf_counter()

    async def _isolated(self, fn: Callable[[list[T]], R],
                        items: list[T]) -> tuple[list[R], list[tuple[int, Exception]]]:
        """``fn`` over the batch; if that fails, item by item, so one bad item cannot sink the others."""
        if not items:
            return [], []
        try:
            return [await self.in_thread(fn, items)], []
        except Exception as exc:
            if len(items) == 1:
                return [], [(0, exc)]
            log.warning("batch failed, isolating the failing items",
                        extra={"items": len(items), "error": f"{type(exc).__name__}: {exc}"})
        outputs: list[R] = []
        failed: list[tuple[int, Exception]] = []
        for i, item in enumerate(items):
            try:
                outputs.append(await self.in_thread(fn, [item]))
            except Exception as exc:
                failed.append((i, exc))
        return outputs, failed

    def _dead(self, stage: str, item: Inbound, exc: BaseException) -> DeadLetter:
        log.info("dead letter", extra={"stage": stage, "error_type": type(exc).__name__, "error": str(exc),
                                       "topic": item.source.topic, "partition": item.source.partition,
                                       "offset": item.source.offset})
        return build_dead_letter(item.payload, item.source, stage, exc, worker=self.worker,
                                 max_payload_bytes=self.max_payload_bytes)

    def _dlq_message(self, dead: DeadLetter) -> Message:
        return Message(self.topics.dlq.name, dead.key, dead.value, dead.headers)

    def _forward(self, stage: str, topic: str, article_id: str, value: bytes, item: Inbound) -> Message:
        return Message(topic, article_id.encode(), value,
                       fallback=lambda exc: self._dlq_message(self._dead(stage, item, exc)))

    async def _finish(self, stage: str, batch: Sequence[Inbound], records: list[ScoreRecord], known: list[Claim],
                      forwards: list[Message], dead: list[DeadLetter], start: float) -> None:
        claims = [*known, *await self.dedupe.claim(records)]
        outbox = Outbox(self.send, max_backoff=self.retry_max_backoff,
                        on_retry=lambda exc, n: self.metrics.retries.labels("kafka").inc())
        emitted: list[Claim] = []
        seen: set[str] = set()
        repeats = Counter[str]()
        for claim in claims:
            if claim.key in seen:
                continue
            seen.add(claim.key)
            if claim.sent:
                repeats["skipped"] += 1
                continue
            if not claim.fresh:
                repeats["re-emitted"] += 1
            article_id = claim.key.rsplit("|", 2)[0].encode()
            headers = [("fluxscore.article_id", article_id), ("fluxscore.filter", claim.filter.encode()),
                       (RECORD_KEY_HEADER, claim.key.encode())]
            for topic in (self.topics.scores(claim.filter).name, self.topics.all_scores.name):
                outbox.add(Message(topic, article_id, claim.payload, headers))
            emitted.append(claim)
        for message in forwards:
            outbox.add(message)
        for letter in dead:
            outbox.add(self._dlq_message(letter))
        delivered = await outbox.flush()
        await self.dedupe.mark_sent([c.key for c in emitted])
        if repeats:
            for action, n in repeats.items():
                self.metrics.duplicates.labels(stage, action).inc(n)
            log.info("records scored before (redelivery)", extra={"stage": stage, **repeats})

        stage_of = {r.key: r.stage.value for r in records}
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
                                       "forwarded": len(forwards), "dead": len(dead)})
