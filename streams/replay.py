"""``fluxscore replay``: re-score a range of ``articles.raw`` (or a JSONL file) with pinned package versions.

The case it is for: a new version of a filter is out, and last week's articles should carry its scores
too. The live workers only score what arrives from now on; replay reads the range again and runs the
stream's own stages on it — :class:`~streams.agents.StageRunner`'s prefilter, probe and model, in this
process, on one :class:`~scoring.pipeline.Pipeline` loaded with the refs given — so its records are
exactly what a worker running those versions would have published, keys, headers and idempotency
included. The articles screened and escalated between the stages are handed on in memory, not through
``articles.screened`` / ``articles.escalated``: the live workers never see a replay.

Idempotent through the workers' own dedupe store: a key already published is skipped, so a second replay
of the same range publishes nothing new, and replaying with the live version publishes nothing (the live
workers scored those keys). Records of a new version supersede the live version's records of the same
article (``supersedes``). Onto a separate topic (``--topic``) the idempotency entries are that topic's own,
so publishing there does not count as done for the live topics, nor the other way round.

Dead letters are not published: the live DLQ got the bad records of that range when they first came in.
They are counted, and written to ``--rejects`` when given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from scoring.exceptions import FluxscoreError, SettingsError
from streams.dlq import DeadLetterRecord, Source
from streams.exceptions import BrokerUnavailableError, StreamError
from streams.settings import StreamSettings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from scoring.settings import ScoringSettings
    from streams.agents import Inbound, StageRunner
    from streams.topics import Topics

log = logging.getLogger("fluxscore.streams.replay")
console = Console(stderr=True)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# A partition that yields nothing for this long although its end is not reached (offsets lost to
# compaction or retention, transaction markers) is taken as done.
IDLE_SECONDS = 10.0


class ReplayError(StreamError):
    """A replay cannot start: a range, an offset list or an input that cannot be used."""


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``36h``, ``90m``, ``2w`` (that long before ``now``), or an ISO 8601 date or time (UTC unless
    it names its zone).

    >>> parse_since("7d", datetime(2026, 11, 22, tzinfo=UTC)).isoformat()
    '2026-11-15T00:00:00+00:00'
    >>> parse_since("2026-11-15T06:30:00+01:00").isoformat()
    '2026-11-15T06:30:00+01:00'
    >>> parse_since("2026-11-15").isoformat()
    '2026-11-15T00:00:00+00:00'
    """
    match = _DURATION.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReplayError(f"--since {text!r} is neither a duration (7d, 36h, 90m) nor an ISO 8601 date or time") \
            from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_offsets(text: str) -> dict[int, int]:
    """``P:O,…`` -> {partition: first offset to replay}.

    >>> parse_offsets("0:120, 3:7")
    {0: 120, 3: 7}
    """
    out: dict[int, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        partition, sep, offset = item.partition(":")
        if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
            raise ReplayError(f"--from-offsets item {item!r} is not PARTITION:OFFSET (e.g. 0:120)")
        if int(partition) in out:
            raise ReplayError(f"--from-offsets names partition {int(partition)} twice")
        out[int(partition)] = int(offset)
    if not out:
        raise ReplayError("--from-offsets names no partition")
    return out


@dataclass
class ReplaySummary:
    """What one replay read and published."""

    articles: int = 0
    published: Counter[str] = field(default_factory=Counter)  # topic -> records
    reemitted: int = 0   # stored records published again (scored before, never delivered)
    skipped: int = 0     # records already delivered: nothing published
    dead: list[DeadLetterRecord] = field(default_factory=list)
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (first offset, end)
    filters: dict[str, str] = field(default_factory=dict)  # name -> version@package_hash
    seconds: float = 0.0

    @property
    def records(self) -> int:
        return max(self.published.values(), default=0)

    def lines(self) -> list[str]:
        where = ", ".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(self.ranges.items())) or "file"
        out = [f"replayed {self.articles} articles ({where}) with "
               f"{', '.join(f'{n}@{v}' for n, v in self.filters.items())} in {self.seconds:.1f} s",
               f"published {self.records} records ({self.reemitted} of them stored before) to "
               f"{', '.join(sorted(self.published)) or 'no topic'}; {self.skipped} already published, skipped"]
        if self.dead:
            out.append(f"{len(self.dead)} dead letters (not published): " + "; ".join(
                f"{d.article_id or '?'}: {d.error_type.rsplit('.', 1)[-1]}: {d.message}" for d in self.dead[:5])
                + (" …" if len(self.dead) > 5 else ""))
        return out


@dataclass
class _Sink:
    """The replay's :data:`~streams.outbox.Sender`: forwards between stages stay in memory, dead letters are
    kept for the summary, score messages go to Kafka (or all to one topic)."""

    topics: Topics
    send: Any  # the producer's Sender
    out_topic: str | None
    summary: ReplaySummary
    forwards: dict[str, list[tuple[bytes, bytes]]] = field(default_factory=dict)  # topic -> [(key, value)]
    rejects: list[bytes] = field(default_factory=list)

    async def __call__(self, topic: str, key: bytes | None, value: bytes,
                       headers: list[tuple[str, bytes]] | None) -> Any:
        if topic in (self.topics.screened.name, self.topics.escalated.name):
            self.forwards.setdefault(topic, []).append((key or b"", value))
            return _done()
        if topic == self.topics.dlq.name:
            self.summary.dead.append(DeadLetterRecord.parse(value, headers))
            self.rejects.append(value)
            return _done()
        if self.out_topic is not None:
            # One message per record on the separate topic: scores.all's, not the per-filter copy.
            if topic != self.topics.all_scores.name:
                return _done()
            topic = self.out_topic
        self.summary.published[topic] += 1
        if topic in (self.out_topic, self.topics.all_scores.name) \
                and any(name == "fluxscore.reemitted_at" for name, _ in headers or ()):
            self.summary.reemitted += 1
        return await self.send(topic, key, value, headers)

    def take(self, topic: str, origin: dict[bytes, Source]) -> list[Inbound]:
        """What a stage forwarded to ``topic``, as the next stage's input (named by the raw article's source)."""
        from streams.agents import Inbound

        items = self.forwards.pop(topic, [])
        return [Inbound(value, origin.get(key) or Source(topic, 0, i, key)) for i, (key, value) in enumerate(items)]


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _article_key(payload: bytes) -> bytes | None:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value.encode() if isinstance(value, str) and value else None


def file_batches(path: Path, size: int) -> Iterator[list[Inbound]]:
    """The lines of a JSONL file as inbound messages (source ``file:<path>``, offset = line number)."""
    from streams.agents import Inbound

    batch: list[Inbound] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            batch.append(Inbound(line, Source(f"file:{path}", 0, number, _article_key(line))))
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


async def _starts(consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int],
                  since: datetime | None, offsets: dict[int, int] | None) -> dict[TopicPartition, int]:
    if offsets is not None:
        known = {tp.partition for tp in tps}
        unknown = sorted(set(offsets) - known)
        if unknown:
            raise ReplayError(f"--from-offsets names partition(s) {unknown} that {tps[0].topic} does not have "
                              f"(it has {sorted(known)})")
        return {tp: offsets[tp.partition] for tp in tps if tp.partition in offsets}
    beginnings = await consumer.beginning_offsets(tps)
    if since is None:
        return dict(beginnings)
    found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
    # No message at or after the time: nothing to replay in that partition.
    return {tp: (hit.offset if hit is not None else ends[tp]) for tp, hit in found.items()}


async def topic_batches(consumer: AIOKafkaConsumer, topic: str, size: int, summary: ReplaySummary, *,
                        since: datetime | None = None, offsets: dict[int, int] | None = None,
                        idle_seconds: float = IDLE_SECONDS) -> AsyncIterator[list[Inbound]]:
    """The messages of ``topic`` from the chosen start to its end at the time replay began, in batches.

    ``since``: from each partition's first message with a timestamp at or after it. The broker's answer
    (``offsets_for_times``) is where reading starts, and the messages' own timestamps are checked up to
    the first one that qualifies: a broker that cannot look offsets up by time (Tansu answers offset 0)
    costs reading from the start, never a wrong range.
    """
    from aiokafka import TopicPartition

    from streams.agents import Inbound

    await consumer.topics()  # the metadata, so that the topic's partitions are known
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise ReplayError(f"topic {topic} does not exist or has no partitions")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    ends = await consumer.end_offsets(tps)
    starts = await _starts(consumer, tps, ends, since, offsets)
    todo = {tp for tp, start in starts.items() if start < ends[tp]}
    summary.ranges = {tp.partition: (starts[tp], ends[tp]) for tp in starts}
    if not todo:
        return
    consumer.assign(sorted(todo, key=lambda tp: tp.partition))
    for tp in todo:
        consumer.seek(tp, starts[tp])
    since_ms = int(since.timestamp() * 1000) if since is not None else None
    reached: set[TopicPartition] = set()  # partitions whose first message at or after `since` was seen
    batch: list[Inbound] = []
    last = time.monotonic()
    while todo:
        got = await consumer.getmany(*todo, timeout_ms=500, max_records=size)
        if not any(got.values()):
            if time.monotonic() - last > idle_seconds:
                log.warning("partitions stopped short of their end offset; taking them as done",
                            extra={"partitions": sorted(tp.partition for tp in todo)})
                break
            continue
        last = time.monotonic()
        for tp, messages in got.items():
            for message in messages:
                if message.offset >= ends[tp]:
                    break
                if since_ms is not None and tp not in reached:
                    if message.timestamp < since_ms:
                        continue
                    reached.add(tp)
                batch.append(Inbound(message.value or b"", Source(tp.topic, tp.partition, message.offset,
                                                                  message.key)))
            if messages and messages[-1].offset + 1 >= ends[tp]:
                todo.discard(tp)
                consumer.pause(tp)
        if len(batch) >= size or (batch and not todo):
            yield batch
            batch = []
    if batch:
        yield batch


async def score_batch(runner: StageRunner, sink: _Sink, batch: list[Inbound]) -> None:
    """Prefilter, probe and model over one batch, each stage fed in memory what the one before forwarded."""
    # Forwards are keyed by article id: what lets a later stage's dead letter name the raw message.
    origin = {key: item.source for item in batch if (key := _article_key(item.payload)) is not None}
    sink.summary.articles += len(batch)
    await runner.prefilter(batch)
    screened = sink.take(runner.topics.screened.name, origin)
    if screened:
        await runner.probe(screened)
    escalated = sink.take(runner.topics.escalated.name, origin)
    if escalated:
        await runner.model(escalated)


async def replay(filters: str, settings: StreamSettings, scoring: ScoringSettings, *, since: datetime | None = None,
                 offsets: dict[int, int] | None = None, file: Path | None = None, topic: str | None = None,
                 rejects: Path | None = None, batch_size: int = 64) -> ReplaySummary:
    """Re-score a range of the raw topic (or ``file``) with ``filters`` onto the score topics (or ``topic``)."""
    from scoring.pipeline import Pipeline
    from streams.agents import StageRunner
    from streams.dedupe import DedupeStore
    from streams.kafka import aiokafka_sender, ensure_topics, make_producer, servers
    from streams.metrics import StreamMetrics
    from streams.topics import Topics, TopicSpec

    if file is not None and (since is not None or offsets is not None):
        raise ReplayError("--since and --from-offsets select a range of the topic; a --file is read whole")
    if since is not None and offsets is not None:
        raise ReplayError("give --since or --from-offsets, not both")
    bootstrap, redis_url = settings.require_cluster()
    topics = Topics.from_settings(settings)
    out = None if topic is None else (topic if topic.startswith(settings.topic_prefix)
                                      else settings.topic_prefix + topic)
    started = time.perf_counter()
    summary = ReplaySummary()
    pipeline = await asyncio.to_thread(Pipeline.load, filters, settings=scoring)
    for name in pipeline.filters:
        topics.scores(name)  # refuses the reserved name 'all'
    summary.filters = {n: f"{f.package.version}#{f.ref.package_hash}" for n, f in pipeline.filters.items()}
    if settings.embedding_cache_ttl:
        from scoring.embcache import RedisEmbeddingStore

        pipeline.embedding_store = RedisEmbeddingStore.from_url(redis_url, prefix=settings.redis_prefix,
                                                                ttl=settings.embedding_cache_ttl)
    wanted = [TopicSpec(out, topics.scores_partitions)] if out else \
        [topics.all_scores, *(topics.scores(f) for f in pipeline.filters)]
    await ensure_topics(bootstrap, wanted, replication=settings.replication)
    # The live workers' idempotency entries, or, onto a separate topic, that topic's own.
    prefix = settings.redis_prefix if out is None else f"{settings.redis_prefix}:to:{out}"
    dedupe = DedupeStore.from_url(redis_url, prefix=prefix, ttl=settings.dedupe_ttl,
                                  max_backoff=settings.retry_max_backoff)
    producer = make_producer(bootstrap, max_batch_bytes=settings.producer_max_batch_bytes,
                             max_request_size=settings.max_message_bytes)
    metrics = StreamMetrics()
    await producer.start()
    sink = _Sink(topics, aiokafka_sender(producer), out, summary)
    runner = StageRunner(pipeline=pipeline, topics=topics, dedupe=dedupe, send=sink, metrics=metrics,
                         limits=scoring.limits, max_message_bytes=settings.max_forward_bytes,
                         max_payload_bytes=settings.dead_letter_payload_bytes,
                         retry_max_backoff=settings.retry_max_backoff,
                         worker=f"replay:{socket.gethostname()}:{os.getpid()}")
    try:
        await dedupe.wait_ready()
        if file is not None:
            for batch in file_batches(file, batch_size):
                await score_batch(runner, sink, batch)
        else:
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(bootstrap_servers=servers(bootstrap), group_id=None,
                                        enable_auto_commit=False, auto_offset_reset="earliest")
            await consumer.start()
            try:
                async for batch in topic_batches(consumer, topics.raw.name, batch_size, summary, since=since,
                                                 offsets=offsets):
                    await score_batch(runner, sink, batch)
            finally:
                await consumer.stop()
    finally:
        await producer.stop()
        await dedupe.close()
        runner.executor.shutdown(wait=False, cancel_futures=True)
    for stage in ("prefilter", "probe", "model"):
        summary.skipped += int(metrics.registry.get_sample_value(
            "fluxscore_stream_duplicates_total", {"stage": stage, "action": "skipped"}) or 0)
    if rejects is not None:
        rejects.write_bytes(b"".join(line + b"\n" for line in sink.rejects))
    summary.seconds = time.perf_counter() - started
    return summary


def replay_command(
    filters: Annotated[str, typer.Option("--filters", "-f", help=(
        "the package versions to score with, comma-separated: name@version (a plain name is resolved once, "
        "to its newest version) or a package directory"))],
    since: Annotated[str | None, typer.Option(help=(
        "replay the messages from this time on: a duration back from now (7d, 36h) or an ISO 8601 date/time"))]
    = None,
    from_offsets: Annotated[str | None, typer.Option("--from-offsets", help=(
        "replay these partitions from these offsets: P:O,… (other partitions are not replayed)"))] = None,
    file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help=(
        "read the articles from this JSONL file instead of the raw topic"))] = None,
    topic: Annotated[str | None, typer.Option(help=(
        "publish every record to this one topic instead of scores.<filter> and scores.all "
        "(FLUXSCORE_TOPIC_PREFIX is added)"))] = None,
    rejects: Annotated[Path | None, typer.Option(help="write the dead letters (JSONL) here")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="articles per batch")] = 64,
) -> None:
    """Re-score articles.raw (all of it, --since a time or --from-offsets) or a --file with pinned package
    versions, onto the score topics or a separate --topic; idempotent (a second replay publishes nothing)."""
    from scoring.settings import ScoringSettings

    try:
        settings = StreamSettings.from_env()
        scoring = ScoringSettings.from_env()
        when = parse_since(since) if since is not None else None
        offsets = parse_offsets(from_offsets) if from_offsets is not None else None
        summary = asyncio.run(replay(filters, settings, scoring, since=when, offsets=offsets, file=file,
                                     topic=topic, rejects=rejects, batch_size=batch_size))
    except FluxscoreError as exc:
        # The stream commands' exit codes: 2 a bad setting or option, 3 the broker unreachable, 1 anything else.
        code = 2 if isinstance(exc, ReplayError | SettingsError) else 3 if isinstance(exc, BrokerUnavailableError) \
            else 1
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise typer.Exit(code) from None
    for line in summary.lines():
        console.print(line, markup=False, highlight=False)
