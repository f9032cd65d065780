"""Active learning, selection (``fluxscore worker --role selector``): which scored articles to label next.

The selector reads ``scores.all`` in a consumer group of its own (``<app id>-selector``, so the pipeline
and the other solo roles are untouched) and queues candidates per filter on ``active-learning.<filter>``
as :class:`~training.labels.QueueItem` messages, keyed by article id, for the ``oracle`` role
(:mod:`streams.oracle_worker`) and for people.

**Candidates.** A stage-1 or stage-2 record whose tier is HIGH, or whose weighted average is at or above
the filter's bar (``active_learning.bar`` in the package config, 5.5 by default). Blocked records
(prefilter, commerce) never are.

**Priority.** Each queued item records the parts of its priority (:class:`~training.labels.Priority`):

- *uncertainty*: how much the probe and the student disagree where both ran (the record's
  ``stage1_estimate`` vs its stage-2 ``weighted_average``; a gap of :data:`UNCERTAINTY_SCALE` points or more
  is 1);
- *boundary*: closeness of the weighted average to the filter's HIGH boundary (``tiers.high``; 1 on it,
  0 at :data:`BOUNDARY_WIDTH` points or more away);
- *novelty*: 1 - the cosine similarity of the candidate's stage-1 embedding (the filter's own encoder,
  :func:`scoring.embedding.embed`) to the nearest item already queued for the filter — a bounded set kept
  in Redis (``FLUXSCORE_SELECTOR_DIVERSITY_WINDOW``), so it holds what was labelled through the queue too.

Within a micro-batch the candidates are taken k-center style (:func:`select`): the best combined score
first, then every other candidate's novelty is measured against it as well, and so on. A candidate at or
above the package's ``active_learning.near_duplicate`` similarity is skipped. Then each one, best first,
needs a token from its filter's daily budget (``active_learning.daily_budget``; a token bucket in Redis
holding at most that many and refilled evenly over 24 h, shared by every selector): the rest of the
batch is skipped (counted in ``fluxscore_al_candidates{outcome="over_budget"}``).

**Once per (article, filter).** An id already in the label store (:func:`labelled_among`, any source) is
skipped. A queued item is stored in Redis first (``HSETNX``, the "SET NX" of the dedupe key), sent, and
marked sent once Kafka acknowledged it: a record redelivered after a crash re-emits the stored item (the
same bytes: the oracle stores one label per article, filter and model, so a repeat costs nothing) until
it is marked, and is skipped after. A skipped candidate (near-duplicate, over budget) is not remembered:
a redelivery judges it again.

**Why the text comes from ``articles.screened``.** The oracle and people need the article's text, and
score records do not carry it (they go to every consumer of ``scores.*``; the text would multiply their
size). ``articles.screened`` carries each article with ``text`` (title + cleaned content, what the models
read), so the selector reads it too and keeps title, text, URL and language per article in Redis for
``FLUXSCORE_SELECTOR_TEXT_TTL`` seconds. The two topics are consumed independently (other partitions,
other lag, each rewound to its own committed offset after a restart), so a candidate's record may be read
before its article. Such a record waits in Redis — not in memory, because the record's offset is
acknowledged while it waits and a crash must not lose it — until the article arrives (at most
``FLUXSCORE_SELECTOR_MAX_WAITING`` articles wait; the oldest are dropped, and each entry expires with
the text TTL). One Lua script checks for the text and, if it is missing, parks the record, atomically, so
an article that arrives in between is never missed; parked records are removed only after they were
handled, so a crash in between handles them again on redelivery.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from prometheus_client import Counter as PromCounter
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select as sql_select
from sqlalchemy.exc import OperationalError

from scoring.aggregate import Tier
from scoring.package import FilterConfig, FilterPackage, resolve, search_roots
from scoring.records import ScoreRecord, StageUsed
from scoring.settings import ScoringSettings
from streams import logs
from streams.agents import Inbound
from streams.app import batch_agent, build_app, faust_sender, faust_topic, register_assignment_log, run_faust
from streams.dedupe import REDIS_UNAVAILABLE
from streams.kafka import ensure_topics
from streams.metrics import LOADING_MODELS, WAITING_FOR_KAFKA, WAITING_FOR_REDIS, StreamMetrics, ready_when_started
from streams.outbox import Message, Outbox, Sender
from streams.retry import retry_forever
from streams.settings import StreamSettings
from streams.topics import Topics
from streams.wire import RECORD_KEY_HEADER, decode_screened
from training.labels import LABELS, LabelsSettings, LabelStore, Priority, QueueItem

log = logging.getLogger("fluxscore.streams.selector")
T = TypeVar("T")

# A probe/student gap of this many points (half the scale) counts as full disagreement.
UNCERTAINTY_SCALE = 5.0
# Weighted averages this far from the HIGH boundary or farther are not "close" to it at all.
BOUNDARY_WIDTH = 3.0
# How the parts combine; disagreement weighs most, since it is where the models are most likely wrong.
WEIGHT_UNCERTAINTY, WEIGHT_BOUNDARY, WEIGHT_NOVELTY = 0.4, 0.3, 0.3
DAY = 24 * 3600.0
SCORED = frozenset({StageUsed.STAGE1, StageUsed.STAGE2})

EmbedFn = Callable[[FilterPackage, list[str]], np.ndarray]

# -- the policy (pure) --------------------------------------------------------------------------------


def is_candidate(record: ScoreRecord, config: FilterConfig) -> bool:
    """A scored (not blocked) record that is HIGH, or at or above the filter's active-learning bar."""
    if record.stage not in SCORED:
        return False
    return record.tier == Tier.HIGH or record.weighted_average >= config.active_learning.bar


def uncertainty(record: ScoreRecord) -> float:
    """Probe vs student disagreement, 0..1; 0 where only one of them ran."""
    if record.stage != StageUsed.STAGE2 or record.stage1_estimate is None:
        return 0.0
    return min(1.0, abs(record.stage1_estimate - record.weighted_average) / UNCERTAINTY_SCALE)


def boundary(weighted_average: float, high: float) -> float:
    """Closeness to the HIGH boundary, 0..1."""
    return max(0.0, 1.0 - abs(weighted_average - high) / BOUNDARY_WIDTH)


def priority(uncertainty: float, boundary: float, novelty: float) -> Priority:
    score = WEIGHT_UNCERTAINTY * uncertainty + WEIGHT_BOUNDARY * boundary + WEIGHT_NOVELTY * novelty
    return Priority(score=round(score, 6), uncertainty=round(uncertainty, 6), boundary=round(boundary, 6),
                    novelty=round(novelty, 6))


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


@dataclass(frozen=True)
class Selection:
    """What :func:`select` decided: indices in the order to queue them, with their priority; and the
    near-duplicates, with the similarity that ruled them out."""

    chosen: list[tuple[int, Priority]]
    near_duplicates: list[tuple[int, float]]


def select(parts: Sequence[tuple[float, float]], embeddings: np.ndarray, bank: np.ndarray,
           near_duplicate: float) -> Selection:
    """k-center greedy over one filter's candidates.

    ``parts`` holds (uncertainty, boundary) per candidate, ``embeddings`` their stage-1 embeddings (one row
    each), ``bank`` the embeddings of items queued before (possibly none). Repeatedly take the candidate
    with the best combined priority, novelty measured against the bank and everything taken so far; a
    candidate whose nearest neighbour there is at least ``near_duplicate`` similar is dropped instead.
    Ties go to the earlier candidate, so the result does not depend on anything but the input.

    >>> sel = select([(0.0, 1.0), (0.0, 1.0), (1.0, 0.0)], np.eye(3)[[0, 0, 1]], np.zeros((0, 3)), 0.95)
    >>> [(i, p.score) for i, p in sel.chosen], sel.near_duplicates
    ([(2, 0.7), (0, 0.6)], [(1, 1.0)])
    """
    n = len(parts)
    if n == 0:
        return Selection([], [])
    vectors = _unit(embeddings)
    nearest = (vectors @ _unit(bank).T).max(axis=1) if len(bank) else np.full(n, -1.0, dtype=np.float32)
    remaining = list(range(n))
    chosen: list[tuple[int, Priority]] = []
    duplicates: list[tuple[int, float]] = []
    while remaining:
        keep = []
        for i in remaining:
            if nearest[i] >= near_duplicate:
                duplicates.append((i, round(float(nearest[i]), 4)))
            else:
                keep.append(i)
        remaining = keep
        if not remaining:
            break
        scored = [(i, priority(parts[i][0], parts[i][1], min(1.0, max(0.0, 1.0 - float(max(nearest[i], 0.0))))))
                  for i in remaining]
        best, best_priority = max(scored, key=lambda pair: pair[1].score)  # max keeps the first of equals
        chosen.append((best, best_priority))
        remaining.remove(best)
        nearest = np.maximum(nearest, vectors @ vectors[best])
    return Selection(chosen, duplicates)


# -- state in Redis -----------------------------------------------------------------------------------

# The record waits unless the text is there; both in one step, so an article stored in between is seen.
_TEXT_OR_WAIT = """
local text = redis.call('GET', KEYS[1])
if text then return {1, text} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (tonumber(ARGV[4]) - tonumber(ARGV[3])))
local dropped = 0
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6])
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[3], excess)
  for i = 1, #oldest, 2 do
    dropped = dropped + redis.call('HLEN', ARGV[7] .. oldest[i])
    redis.call('DEL', ARGV[7] .. oldest[i])
  end
end
return {0, dropped}
"""
_DONE_WAITING = """
redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 0
"""
# A token bucket per filter: at most `capacity` tokens, `rate` more per second; an absent bucket is full.
_TAKE_TOKEN = """
local capacity = tonumber(ARGV[1])
if capacity <= 0 then return {0, '0'} end
local rate, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then tokens, ts = capacity, now end
if now > ts then tokens, ts = tokens + (now - ts) * rate, now end
tokens = math.min(tokens, capacity)
local granted = 0
if tokens >= 1 then tokens, granted = tokens - 1, 1 end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', ts))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {granted, string.format('%.6f', tokens)}
"""
_ITEM, _SENT = "item", "sent"


class ArticleText(BaseModel):
    """What the selector keeps of a screened article: what a queue item needs and a score record lacks."""

    model_config = ConfigDict(frozen=True)

    title: str = ""
    text: str
    url: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class Waited:
    """A record that was parked for its text, now with it: handled, it is removed from the wait."""

    record: ScoreRecord
    article: ArticleText


@dataclass(frozen=True)
class Claimed:
    payload: bytes
    fresh: bool
    sent: bool


class SelectorState:
    """The selector's Redis keys: article texts, records waiting for theirs, queued items, budgets, and the
    embeddings of queued items. Every call waits for Redis without limit (nothing is dropped)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "fluxscore", text_ttl: int = 24 * 3600,
                 max_waiting: int = 10_000, diversity_window: int = 2000, item_ttl: int = 7 * 24 * 3600,
                 max_backoff: float = 5.0, on_retry: Callable[[BaseException, int], None] | None = None) -> None:
        self.client = client
        self.prefix = f"{prefix}:al"
        self.text_ttl, self.max_waiting, self.window, self.item_ttl = text_ttl, max_waiting, diversity_window, item_ttl
        self.max_backoff = max_backoff
        self._on_retry = on_retry
        self._text_or_wait = client.register_script(_TEXT_OR_WAIT)
        self._done_waiting = client.register_script(_DONE_WAITING)
        self._take_token = client.register_script(_TAKE_TOKEN)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SelectorState:
        client = aioredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0,
                                         health_check_interval=10)
        return cls(client, **kwargs)

    # keys
    def text_key(self, article_id: str) -> str:
        return f"{self.prefix}:text:{article_id}"

    def wait_key(self, article_id: str) -> str:
        return f"{self.prefix}:wait:{article_id}"

    @property
    def waiting_key(self) -> str:
        return f"{self.prefix}:waiting"

    def item_key(self, filter_name: str, article_id: str) -> str:
        return f"{self.prefix}:item:{filter_name}:{article_id}"

    def budget_key(self, filter_name: str) -> str:
        return f"{self.prefix}:budget:{filter_name}"

    def bank_key(self, filter_name: str) -> str:
        return f"{self.prefix}:emb:{filter_name}"

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return await retry_forever(op, retry_on=REDIS_UNAVAILABLE, what=f"Redis ({what})",
                                   max_backoff=self.max_backoff, on_retry=self._on_retry)

    async def wait_ready(self) -> None:
        async def ping() -> None:
            await self.client.ping()
        await self._retry("ping", ping)

    async def put_texts(self, articles: Sequence[tuple[str, ArticleText]]) -> list[Waited]:
        """Keep each article's text; return the records that waited for these articles."""
        if not articles:
            return []

        async def op() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for article_id, article in articles:
                    # SET before HGETALL: a record parked after this SET finds the text instead.
                    pipe.set(self.text_key(article_id), article.model_dump_json(), ex=self.text_ttl)
                    pipe.hvals(self.wait_key(article_id))
                return await pipe.execute()

        results = await self._retry("put texts", op)
        waited: list[Waited] = []
        for i, (article_id, article) in enumerate(articles):
            for raw in results[2 * i + 1] or []:
                try:
                    waited.append(Waited(ScoreRecord.from_json(raw), article))
                except Exception:
                    log.warning("a waiting record is unreadable; dropped", extra={"article_id": article_id})
        return waited

    async def text_or_wait(self, record: ScoreRecord, now: float) -> tuple[ArticleText | None, int]:
        """The article's text, or None after parking ``record`` until it comes; and how many records the
        bound on waiting articles dropped to make room."""
        keys = [self.text_key(record.article_id), self.wait_key(record.article_id), self.waiting_key]
        args: list[str | bytes | int] = [record.key, record.to_json(), self.text_ttl, repr(now), record.article_id,
                                         self.max_waiting, f"{self.prefix}:wait:"]

        async def op() -> Any:
            return await self._text_or_wait(keys=keys, args=args)

        found, value = await self._retry("text or wait", op)
        if int(found):
            return ArticleText.model_validate_json(value), 0
        return None, int(value)

    async def done_waiting(self, waited: Sequence[Waited]) -> None:
        by_article: dict[str, list[str]] = {}
        for w in waited:
            by_article.setdefault(w.record.article_id, []).append(w.record.key)
        for article_id, record_keys in by_article.items():
            async def op(article_id: str = article_id, record_keys: list[str] = record_keys) -> Any:
                return await self._done_waiting(keys=[self.wait_key(article_id), self.waiting_key],
                                                args=[article_id, *record_keys])
            await self._retry("done waiting", op)

    async def waiting(self) -> int:
        async def op() -> int:
            return int(await self.client.zcard(self.waiting_key))
        return await self._retry("waiting", op)

    async def lookup(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Claimed]:
        """(filter, article) pairs already queued, with the stored item and whether it was sent."""
        if not keys:
            return {}

        async def op() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for filter_name, article_id in keys:
                    pipe.hmget(self.item_key(filter_name, article_id), [_ITEM, _SENT])
                return await pipe.execute()

        results = await self._retry("lookup", op)
        return {key: Claimed(stored, False, bool(sent))
                for key, (stored, sent) in zip(keys, results, strict=True) if stored is not None}

    async def claim(self, items: Sequence[tuple[tuple[str, str], bytes]]) -> list[Claimed]:
        """Store each item unless its (filter, article) has one: what to emit for each, in order."""
        if not items:
            return []

        async def op() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                for (filter_name, article_id), payload in items:
                    key = self.item_key(filter_name, article_id)
                    pipe.hsetnx(key, _ITEM, payload)
                    pipe.expire(key, self.item_ttl)
                    pipe.hmget(key, [_ITEM, _SENT])
                return await pipe.execute()

        results = await self._retry("claim", op)
        out = []
        for i, (_, payload) in enumerate(items):
            stored, sent = results[3 * i + 2]
            out.append(Claimed(stored or payload, bool(results[3 * i]), bool(sent)))
        return out

    async def mark_sent(self, keys: Sequence[tuple[str, str]]) -> None:
        if not keys:
            return

        async def op() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for filter_name, article_id in keys:
                    pipe.hset(self.item_key(filter_name, article_id), _SENT, "1")
                await pipe.execute()

        await self._retry("mark sent", op)

    async def take_token(self, filter_name: str, daily_budget: int, now: float) -> bool:
        """One token of the filter's daily budget, or False when it is spent."""
        args: list[str | int] = [daily_budget, repr(daily_budget / DAY), repr(now), int(2 * DAY)]

        async def op() -> Any:
            return await self._take_token(keys=[self.budget_key(filter_name)], args=args)

        granted, _ = await self._retry("budget", op)
        return bool(int(granted))

    async def bank(self, filter_name: str, dim: int) -> np.ndarray:
        """The embeddings of the items last queued for the filter (newest first); rows of another size (an
        earlier encoder) are left out."""
        async def op() -> list[bytes]:
            rows = await self.client.lrange(self.bank_key(filter_name), 0, self.window - 1)
            return [raw for raw in rows if isinstance(raw, bytes)]  # the client does not decode responses

        rows = [np.frombuffer(raw, dtype=np.float32) for raw in await self._retry("bank", op)
                if len(raw) == 4 * dim]
        return np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)

    async def remember(self, filter_name: str, embeddings: Sequence[np.ndarray]) -> None:
        if not embeddings:
            return

        async def op() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                key = self.bank_key(filter_name)
                for row in embeddings:
                    pipe.lpush(key, np.asarray(row, dtype=np.float32).tobytes())
                pipe.ltrim(key, 0, self.window - 1)
                await pipe.execute()

        await self._retry("remember", op)

    async def close(self) -> None:
        await self.client.aclose()


# -- the role -----------------------------------------------------------------------------------------


class SelectorMetrics:
    def __init__(self, metrics: StreamMetrics) -> None:
        self.candidates = PromCounter("fluxscore_al_candidates", "Active-learning candidates by what became of "
                                      "them (queued, re_emitted, duplicate, labelled, near_duplicate, over_budget, "
                                      "waiting, dropped_waiting, too_large)", ["filter", "outcome"],
                                      registry=metrics.registry)


@dataclass
class _Pending:
    record: ScoreRecord
    article: ArticleText
    key: tuple[str, str]  # (filter, article id)


@dataclass
class Selector:
    packages: dict[str, FilterPackage]
    state: SelectorState
    labels: LabelStore
    topics: Topics
    send: Sender
    metrics: StreamMetrics
    embed: EmbedFn
    max_message_bytes: int = 1_048_576 - 65_536
    retry_max_backoff: float = 5.0
    clock: Callable[[], float] = time.time
    # The encoder is not thread-safe: one thread embeds, off the event loop (heartbeats go on).
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="embed"))
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.gauges = SelectorMetrics(self.metrics)
        # Both agents run on this loop; one selection at a time keeps budget and bank reads consistent.
        self._lock = asyncio.Lock()

    def _count(self, filter_name: str, outcome: str, n: int = 1) -> None:
        if n:
            self.counts[(filter_name, outcome)] += n
            self.gauges.candidates.labels(filter_name, outcome).inc(n)

    async def _labels(self, op: Callable[[], T]) -> T:
        # The label store may be a database server that restarts: wait for it like for Redis.
        async def attempt() -> T:
            return await asyncio.to_thread(op)
        return await retry_forever(attempt, retry_on=(OperationalError,), what="label store",
                                   max_backoff=self.retry_max_backoff,
                                   on_retry=lambda exc, n: self.metrics.retries.labels("labels").inc())

    # -- the two agents ------------------------------------------------------------------------------

    async def handle_screened(self, batch: Sequence[Inbound]) -> None:
        self.metrics.messages_in.labels("selector").inc(len(batch))
        articles: list[tuple[str, ArticleText]] = []
        for item in batch:
            try:
                screened = decode_screened(item.payload)
            except Exception:
                continue  # the probe dead-letters it; the selector has nothing to add
            articles.append((screened.article.id, ArticleText(title=screened.article.title, text=screened.text,
                                                              url=screened.article.url,
                                                              language=screened.article.language)))
        waited = await self.state.put_texts(articles)
        if waited:
            async with self._lock:
                await self._select([_Pending(w.record, w.article, (w.record.filter.name, w.record.article_id))
                                    for w in waited if w.record.filter.name in self.packages])
            # Only now: a crash before this handles them again when the article is redelivered.
            await self.state.done_waiting(waited)

    async def handle_scores(self, batch: Sequence[Inbound]) -> None:
        self.metrics.messages_in.labels("selector").inc(len(batch))
        records: dict[tuple[str, str], ScoreRecord] = {}
        for item in batch:
            try:
                record = ScoreRecord.from_json(item.payload)
            except Exception as exc:
                # The selector only reads: a message it cannot use costs that message.
                log.warning("not a score record; skipped", extra={
                    "topic": item.source.topic, "partition": item.source.partition, "offset": item.source.offset,
                    "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                continue
            package = self.packages.get(record.filter.name)
            if package is None or not is_candidate(record, package.config):
                continue
            records.setdefault((record.filter.name, record.article_id), record)
        if not records:
            return
        pending: list[_Pending] = []
        now = self.clock()
        for key, record in records.items():
            article, dropped = await self.state.text_or_wait(record, now)
            if dropped:
                log.warning("records waiting for their article text were dropped (FLUXSCORE_SELECTOR_MAX_WAITING)",
                            extra={"dropped": dropped})
                self._count(record.filter.name, "dropped_waiting", dropped)
            if article is None:
                self._count(record.filter.name, "waiting")
            else:
                pending.append(_Pending(record, article, key))
        if pending:
            async with self._lock:
                await self._select(pending)

    # -- selection -----------------------------------------------------------------------------------

    async def _select(self, pending: list[_Pending]) -> None:
        if not pending:
            return
        before = Counter(self.counts)
        known = await self.state.lookup([p.key for p in pending])
        outbox = Outbox(self.send, max_backoff=self.retry_max_backoff,
                        on_retry=lambda exc, n: self.metrics.retries.labels("kafka").inc())
        emitted: list[tuple[str, str]] = []
        fresh: list[_Pending] = []
        for p in pending:
            claim = known.get(p.key)
            if claim is None:
                fresh.append(p)
            elif claim.sent:
                self._count(p.key[0], "duplicate")
            else:
                # Queued before but not acknowledged (a crash in between): the same item again.
                outbox.add(self._message(p.record, claim.payload))
                emitted.append(p.key)
                self._count(p.key[0], "re_emitted")
        by_filter: dict[str, list[_Pending]] = {}
        for p in fresh:
            by_filter.setdefault(p.key[0], []).append(p)
        remember: dict[str, list[np.ndarray]] = {}
        for filter_name, group in by_filter.items():
            labelled = await self._labels(functools.partial(labelled_among, self.labels, filter_name,
                                                            [p.record.article_id for p in group]))
            self._count(filter_name, "labelled", sum(p.record.article_id in labelled for p in group))
            group = [p for p in group if p.record.article_id not in labelled]
            if not group:
                continue
            package = self.packages[filter_name]
            vectors = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.embed, package, [p.article.text for p in group])
            vectors = _unit(vectors)
            bank = await self.state.bank(filter_name, vectors.shape[1])
            config = package.config
            parts = [(uncertainty(p.record), boundary(p.record.weighted_average, config.tiers.high)) for p in group]
            selection = select(parts, vectors, bank, config.active_learning.near_duplicate)
            self._count(filter_name, "near_duplicate", len(selection.near_duplicates))
            items: list[tuple[tuple[str, str], bytes]] = []
            chosen: list[tuple[_Pending, np.ndarray]] = []
            for position, (index, prio) in enumerate(selection.chosen):
                p = group[index]
                payload = self._item(p, prio).to_json()
                if len(payload) > self.max_message_bytes:
                    log.warning("queue item too large for the topic; skipped", extra={
                        "article_id": p.record.article_id, "filter": filter_name, "bytes": len(payload)})
                    self._count(filter_name, "too_large")
                    continue
                if not await self.state.take_token(filter_name, config.active_learning.daily_budget, self.clock()):
                    # Best first: the rest of the batch ranks below this one, and the bucket is empty.
                    self._count(filter_name, "over_budget", len(selection.chosen) - position)
                    break
                items.append((p.key, payload))
                chosen.append((p, vectors[index]))
            for (p, vector), claim in zip(chosen, await self.state.claim(items), strict=True):
                if claim.sent:
                    self._count(filter_name, "duplicate")
                    continue
                outbox.add(self._message(p.record, claim.payload))
                emitted.append(p.key)
                if claim.fresh:
                    remember.setdefault(filter_name, []).append(vector)
                    self._count(filter_name, "queued")
                else:
                    self._count(filter_name, "re_emitted")
        await outbox.flush()
        await self.state.mark_sent(emitted)
        for filter_name, rows in remember.items():
            await self.state.remember(filter_name, rows)
        delta = {f"{f}:{o}": n - before[(f, o)] for (f, o), n in self.counts.items() if n != before[(f, o)]}
        if delta:
            log.info("candidates selected", extra={"counts": delta, "totals": {
                f"{f}:{o}": n for (f, o), n in sorted(self.counts.items())}})

    def _item(self, p: _Pending, prio: Priority) -> QueueItem:
        r = p.record
        return QueueItem(article_id=r.article_id, filter=r.filter.name, version=r.filter.version,
                         package_hash=r.filter.package_hash, title=p.article.title, text=p.article.text,
                         url=p.article.url, language=p.article.language, weighted_average=r.weighted_average,
                         tier=r.tier.value, stage=r.stage.value,
                         dimensions={d: s.calibrated for d, s in r.dimensions.items()}, priority=prio,
                         record_key=r.key, queued_at=datetime.now(UTC))

    def _message(self, record: ScoreRecord, payload: bytes) -> Message:
        key = record.article_id.encode()
        headers = [("fluxscore.article_id", key), ("fluxscore.filter", record.filter.name.encode()),
                   (RECORD_KEY_HEADER, record.key.encode())]
        return Message(self.topics.active_learning(record.filter.name).name, key, payload, headers)


def labelled_among(store: LabelStore, filter_name: str, article_ids: Sequence[str]) -> set[str]:
    """Which of these articles have a label for the filter (any source): :meth:`LabelStore.labelled_ids`
    narrowed to the ids asked about, so a large store is not read whole for every batch."""
    if not article_ids:
        return set()
    query = sql_select(LABELS.c.article_id).where(LABELS.c.filter == filter_name,
                                              LABELS.c.article_id.in_(list(article_ids)))
    with store.engine.connect() as conn:
        return set(conn.execute(query).scalars())


def load_packages(settings: StreamSettings, scoring: ScoringSettings) -> dict[str, FilterPackage]:
    """The live packages by name (configs, prompts and encoders only: no probe or student is opened)."""
    roots = search_roots(scoring.filters_path)
    packages: dict[str, FilterPackage] = {}
    for ref in settings.filters:
        package = resolve(ref, roots)
        packages[package.name] = package
    return packages


def package_embedder(scoring: ScoringSettings) -> EmbedFn:
    """Each filter's stage-1 encoder, loaded once per model, embedding text exactly as the probe does."""
    from scoring.embedding import EmbeddingKey, embed, load_embedder
    from scoring.settings import resolve_device

    device = resolve_device(scoring.device)
    if scoring.torch_threads:
        import torch

        torch.set_num_threads(scoring.torch_threads)

    def run(package: FilterPackage, texts: list[str]) -> np.ndarray:
        config = package.config
        embedder = load_embedder(config.stage1.embedding_model, device)
        return embed(embedder, EmbeddingKey.of(config), texts, batch_size=scoring.stage1_batch)

    return run




def run_selector_worker(settings: StreamSettings, scoring: ScoringSettings, topics: Topics, metrics: StreamMetrics,
                        name: str) -> int:
    """Runs the selector role; ``metrics`` are already served (by :func:`streams.worker.run_worker`)."""
    from scoring.embedding import load_embedder
    from scoring.settings import resolve_device

    bootstrap, redis_url = settings.require_cluster()
    metrics.set_phase(LOADING_MODELS)
    logs.quiet_progress_bars()
    packages = load_packages(settings, scoring)
    queues = [topics.active_learning(n) for n in packages]
    embed_fn = package_embedder(scoring)
    # Loaded before joining the group, as the pipeline's models are: the first candidate is not slower.
    for model in sorted({p.config.stage1.embedding_model for p in packages.values()}):
        load_embedder(model, resolve_device(scoring.device))
    metrics.set_filters("selector", {n: {"version": p.version, "package_hash": p.package_hash}
                                     for n, p in packages.items()})
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    metrics.set_phase(WAITING_FOR_REDIS)
    state = SelectorState.from_url(redis_url, prefix=settings.redis_prefix, text_ttl=settings.selector_text_ttl,
                                   max_waiting=settings.selector_max_waiting,
                                   diversity_window=settings.selector_diversity_window, item_ttl=settings.dedupe_ttl,
                                   max_backoff=settings.retry_max_backoff,
                                   on_retry=lambda exc, n: metrics.retries.labels("redis").inc())
    loop.run_until_complete(state.wait_ready())
    labels = LabelStore(LabelsSettings.from_env().labels_db)
    metrics.set_phase(WAITING_FOR_KAFKA)
    loop.run_until_complete(ensure_topics(bootstrap, [topics.screened, topics.all_scores, *queues],
                                          replication=settings.replication))
    # Its own consumer group: the selector sees every record and article, whatever else reads them.
    app = build_app(settings.with_app_id(f"{settings.app_id}-selector"))
    selector = Selector(packages, state, labels, topics, faust_sender(app), metrics, embed_fn,
                        max_message_bytes=settings.max_forward_bytes, retry_max_backoff=settings.retry_max_backoff)
    size, within = settings.selector_batch, settings.selector_within
    app.agent(faust_topic(app, topics.screened, settings.replication), name="fluxscore.selector.screened",
              concurrency=1)(batch_agent(selector.handle_screened, "selector", size, within))
    app.agent(faust_topic(app, topics.all_scores, settings.replication), name="fluxscore.selector.scores",
              concurrency=1)(batch_agent(selector.handle_scores, "selector", size, within))
    register_assignment_log(app)
    ready_when_started(app, metrics)
    log.info("worker starting", extra={"roles": ["selector"], "consumes": [topics.screened.name,
                                                                           topics.all_scores.name],
                                       "produces": [q.name for q in queues], "bootstrap": bootstrap,
                                       "worker": name, "labels_db": labels.engine.url.render_as_string(
                                           hide_password=True)})
    try:
        return run_faust(app, loop, settings)
    finally:
        selector.executor.shutdown(wait=False, cancel_futures=True)
        labels.close()
