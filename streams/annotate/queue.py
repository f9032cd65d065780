"""The annotation queue in Redis: items by priority, leases with a timeout, and overlap.

Per filter ``F`` (``P`` is ``FLUXSCORE_ANNOTATE_REDIS_PREFIX``):

``P:queue:F``            sorted set, article id -> priority (highest first)
``P:items:F``            hash, article id -> the :class:`~training.labels.QueueItem` JSON
``P:lease:F:<id>``       string, the annotator holding the item; expires after the lease time
``P:held:F:<annotator>`` string, the item that annotator holds (same expiry), so a reload gets it back
``P:done:F:<id>``        set, annotators who labelled the item (a mirror of the label store)
``P:skipped:F:<id>``     set, annotators who skipped it (they are not offered it again)

An item is leased to one annotator at a time; with overlap N it goes back into the queue after each
label until N different people have labelled it. A lease is a Redis key with an expiry, so an abandoned
item returns to the queue by itself, and queue and leases survive a restart of the service (Redis must
persist, as for the scorer). Every step that reads and then writes runs as one Lua script, so two
annotators asking at once can never be handed the same item.

Labels are written to the :class:`~training.labels.LabelStore` *before* Redis is told, and the store
refuses a second (article, filter, human, annotator) row: a crash in between leaves a label the queue
does not know of, which :meth:`AnnotationQueue.next` and :meth:`AnnotationQueue.add` repair from the
store, never a label lost or given twice. The scripts touch keys they compute from their arguments,
which standalone Redis (what fluxscore runs) allows; Redis Cluster would need hash tags.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, cast

import redis
from sqlalchemy import select

from streams.annotate.exceptions import (
    AlreadyLabelledError,
    InvalidLabelError,
    LeaseLostError,
    NotQueuedError,
    UnknownFilterError,
)
from training.labels import LABELS, Label, LabelStore, QueueItem

MAX_ARTICLE_ID = 512  # the label store's column width
SCORE_MIN, SCORE_MAX = 0.0, 10.0
_SCAN = 100  # queue entries a claim looks at per step inside its script

# KEYS: items, queue, done. ARGV: id, json, priority, annotators who labelled it already...
_ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
for i = 4, #ARGV do redis.call('SADD', KEYS[3], ARGV[i]) end
return 1
"""

# KEYS: held. ARGV: lease prefix, annotator, ttl ms. The item this annotator still holds, lease renewed.
_RENEW = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local lease = ARGV[1] .. id
if redis.call('GET', lease) ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('PEXPIRE', lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return id
"""

# KEYS: queue, held. ARGV: lease prefix, done prefix, skipped prefix, annotator, ttl ms, overlap, scan step.
# The highest-priority item nobody holds, that this annotator has neither labelled nor skipped.
_CLAIM = """
local n = redis.call('ZCARD', KEYS[1])
local step = tonumber(ARGV[7])
local start = 0
while start < n do
  local ids = redis.call('ZREVRANGE', KEYS[1], start, start + step - 1)
  for _, id in ipairs(ids) do
    local lease = ARGV[1] .. id
    local done = ARGV[2] .. id
    if redis.call('EXISTS', lease) == 0
        and redis.call('SISMEMBER', done, ARGV[4]) == 0
        and redis.call('SISMEMBER', ARGV[3] .. id, ARGV[4]) == 0
        and redis.call('SCARD', done) < tonumber(ARGV[6]) then
      redis.call('SET', lease, ARGV[4], 'PX', ARGV[5])
      redis.call('SET', KEYS[2], id, 'PX', ARGV[5])
      return id
    end
  end
  start = start + step
end
return false
"""

# KEYS: lease, held. ARGV: annotator, ttl ms, id. 1: held by this annotator; 2: the lease had expired and
# nobody took the item since, so it is this annotator's again; 0: someone else holds it now.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return 2
"""

# KEYS: lease, held. ARGV: annotator, id. Drop this annotator's lease (and only theirs).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: queue, items, done, skipped, lease, held. ARGV: id, annotator, overlap.
# Record a stored label; 1 when the item has all its labels and left the queue.
_COMPLETE = """
redis.call('SADD', KEYS[3], ARGV[2])
if redis.call('GET', KEYS[5]) == ARGV[2] then redis.call('DEL', KEYS[5]) end
if redis.call('GET', KEYS[6]) == ARGV[1] then redis.call('DEL', KEYS[6]) end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3], KEYS[4])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Leased:
    """An item handed to one annotator, and for how long it stays theirs."""

    item: QueueItem
    annotator: str
    expires_in: float  # seconds
    labels_needed: int  # human labels the item still needs, this one included


@dataclass(frozen=True)
class Submitted:
    label: Label
    finished: bool  # the item has all its labels and left the queue


@dataclass(frozen=True)
class DimensionAgreement:
    """How far apart people's scores of one dimension are, over items labelled by several of them."""

    mean_abs_diff: float  # mean over items of the mean |a - b| over pairs of annotators
    items: int


@dataclass(frozen=True)
class QueueStats:
    filter: str
    queued: int
    leased: int
    human_labels: int
    by_annotator: dict[str, int]
    overlap: int
    multi_labelled: int  # items with two or more human labels
    agreement: dict[str, DimensionAgreement] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"filter": self.filter, "queued": self.queued, "leased": self.leased,
                "human_labels": self.human_labels, "by_annotator": self.by_annotator, "overlap": self.overlap,
                "multi_labelled": self.multi_labelled,
                "agreement": {d: {"mean_abs_diff": a.mean_abs_diff, "items": a.items}
                              for d, a in self.agreement.items()}}


def agreement(labels: Iterable[Label]) -> dict[str, DimensionAgreement]:
    """Mean absolute difference per dimension between annotators of the same items (human labels only).

    >>> a = Label(article_id="x", filter="f", source="human", annotator="ann", scores={"d": 4.0})
    >>> b = a.model_copy(update={"annotator": "bob", "scores": {"d": 7.0}})
    >>> agreement([a, b])["d"]
    DimensionAgreement(mean_abs_diff=3.0, items=1)
    """
    by_item: dict[str, list[Label]] = {}
    for label in labels:
        if label.source == "human":
            by_item.setdefault(label.article_id, []).append(label)
    sums: dict[str, list[float]] = {}
    for group in by_item.values():
        if len(group) < 2:
            continue
        for dim in sorted({d for lb in group for d in lb.scores}):
            values = [lb.scores[dim] for lb in group if dim in lb.scores]
            pairs = list(combinations(values, 2))
            if pairs:
                sums.setdefault(dim, []).append(sum(abs(a - b) for a, b in pairs) / len(pairs))
    return {dim: DimensionAgreement(round(sum(v) / len(v), 3), len(v)) for dim, v in sorted(sums.items())}


def validate_scores(item: QueueItem, scores: Mapping[str, Any]) -> dict[str, float]:
    """Every one of the item's dimensions, each a number in 0..10; nothing else."""
    known = set(item.dimensions)
    unknown = sorted(set(scores) - known)
    if unknown:
        raise InvalidLabelError(f"unknown dimension(s) {', '.join(map(repr, unknown))} for filter "
                                f"{item.filter!r}; expected {', '.join(sorted(known))}", filter=item.filter)
    missing = [d for d in item.dimensions if d not in scores]
    if missing:
        raise InvalidLabelError(f"missing score(s) for {', '.join(missing)}", filter=item.filter)
    clean: dict[str, float] = {}
    for dim in item.dimensions:
        value = scores[dim]
        # bool is an int in Python; a checkbox value is not a score.
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidLabelError(f"score of {dim!r} must be a number", filter=item.filter)
        try:
            number = float(value)
        except ValueError:
            raise InvalidLabelError(f"score of {dim!r} must be a number, got {str(value)[:40]!r}",
                                    filter=item.filter) from None
        if not math.isfinite(number) or not SCORE_MIN <= number <= SCORE_MAX:
            raise InvalidLabelError(f"score of {dim!r} must be within 0..10, got {str(value)[:40]}",
                                    filter=item.filter)
        clean[dim] = number
    return clean


class AnnotationQueue:
    """The queue of one service: the filters it serves, in Redis, with labels in the label store."""

    def __init__(self, client: redis.Redis, store: LabelStore, *, filters: Sequence[str], prefix: str,
                 overlap: int = 1, lease_seconds: float = 900.0, note_max: int = 2000) -> None:
        self.redis = client
        self.store = store
        self.filters = tuple(filters)
        self.prefix = prefix
        self.overlap = overlap
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.note_max = note_max
        self._add = client.register_script(_ADD)
        self._renew = client.register_script(_RENEW)
        self._claim = client.register_script(_CLAIM)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._complete = client.register_script(_COMPLETE)

    @classmethod
    def connect(cls, url: str, store: LabelStore, **options: Any) -> AnnotationQueue:
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
                                      health_check_interval=30)
        return cls(client, store, **options)

    def close(self) -> None:
        self.redis.close()

    # -- keys ----------------------------------------------------------------------------------------

    def _k(self, kind: str, filter_name: str, suffix: str | None = None) -> str:
        base = f"{self.prefix}:{kind}:{filter_name}"
        return base if suffix is None else f"{base}:{suffix}"

    def check_filter(self, filter_name: str) -> str:
        if filter_name not in self.filters:
            raise UnknownFilterError(f"unknown filter {filter_name[:64]!r}; this service labels "
                                     f"{', '.join(self.filters)}")
        return filter_name

    @staticmethod
    def _check_id(article_id: str) -> str:
        if not article_id or len(article_id) > MAX_ARTICLE_ID:
            raise NotQueuedError(f"article ids are 1..{MAX_ARTICLE_ID} characters")
        return article_id

    # -- the label store's view ----------------------------------------------------------------------

    def human_annotators(self, filter_name: str, article_id: str) -> set[str]:
        """Who has labelled this item, from the label store (the truth the Redis sets mirror)."""
        query = select(LABELS.c.annotator).where(LABELS.c.article_id == article_id, LABELS.c.filter == filter_name,
                                                 LABELS.c.source == "human")
        with self.store.engine.connect() as conn:
            return {str(a) for a in conn.execute(query).scalars()}

    def labels_for(self, filter_name: str, article_id: str, *, source: str) -> list[Label]:
        query = select(LABELS).where(LABELS.c.article_id == article_id, LABELS.c.filter == filter_name,
                                     LABELS.c.source == source).order_by(LABELS.c.id)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [Label.model_validate({k: v for k, v in row.items() if k != "id"}) for row in rows]

    # -- filling the queue ---------------------------------------------------------------------------

    def add(self, item: QueueItem) -> str:
        """Queue ``item``: ``added``, ``present`` (queued already) or ``labelled`` (has its labels)."""
        self.check_filter(item.filter)
        self._check_id(item.article_id)
        done = self.human_annotators(item.filter, item.article_id)
        if len(done) >= self.overlap:
            return "labelled"
        f = item.filter
        added = self._add(keys=[self._k("items", f), self._k("queue", f), self._k("done", f, item.article_id)],
                          args=[item.article_id, item.to_json().decode(), repr(float(item.priority.score)),
                                *sorted(done)])
        return "added" if added else "present"

    # -- handing out ---------------------------------------------------------------------------------

    def item(self, filter_name: str, article_id: str) -> QueueItem:
        self.check_filter(filter_name)
        raw = self.redis.hget(self._k("items", filter_name), self._check_id(article_id))
        if raw is None:
            raise NotQueuedError(f"{article_id[:80]!r} is not in the {filter_name} queue (labelled already, "
                                 "or never queued)", filter=filter_name)
        return QueueItem.from_json(cast(str, raw))

    def _leased(self, filter_name: str, annotator: str, item: QueueItem) -> Leased:
        ttl = cast(int, self.redis.pttl(self._k("lease", filter_name, item.article_id)))
        done = cast(int, self.redis.scard(self._k("done", filter_name, item.article_id)))
        return Leased(item, annotator, max(0.0, ttl / 1000), max(1, self.overlap - done))

    def next(self, filter_name: str, annotator: str) -> Leased | None:
        """The item this annotator holds (lease renewed), else the best free one leased to them; None: empty."""
        self.check_filter(filter_name)
        lease_prefix = self._k("lease", filter_name) + ":"
        held_key = self._k("held", filter_name, annotator)
        held = self._renew(keys=[held_key], args=[lease_prefix, annotator, self.lease_ms])
        if held:
            try:
                return self._leased(filter_name, annotator, self.item(filter_name, cast(str, held)))
            except NotQueuedError:
                self.release(filter_name, annotator, cast(str, held))
        # Each pass either returns an item or drops one from this annotator's candidates, so this ends.
        while True:
            got = self._claim(keys=[self._k("queue", filter_name), held_key],
                              args=[lease_prefix, self._k("done", filter_name) + ":",
                                    self._k("skipped", filter_name) + ":", annotator, self.lease_ms, self.overlap,
                                    _SCAN])
            if not got:
                return None
            article_id = cast(str, got)
            try:
                item = self.item(filter_name, article_id)
            except NotQueuedError:
                # A queue entry without its item (never written by this module): drop it.
                self.redis.zrem(self._k("queue", filter_name), article_id)
                self.release(filter_name, annotator, article_id)
                continue
            if annotator in self.human_annotators(filter_name, article_id):
                # Labelled, but the service stopped before Redis heard of it: repair, and look further.
                self._finish(filter_name, annotator, article_id)
                continue
            return self._leased(filter_name, annotator, item)

    def holder(self, filter_name: str, article_id: str) -> str | None:
        """Who holds the item now (None: nobody)."""
        self.check_filter(filter_name)
        value = self.redis.get(self._k("lease", filter_name, self._check_id(article_id)))
        return cast(str | None, value)

    def held_by(self, filter_name: str, annotator: str) -> Leased | None:
        """The item the annotator holds in this filter, without renewing or claiming anything."""
        self.check_filter(filter_name)
        article_id = cast(str | None, self.redis.get(self._k("held", filter_name, annotator)))
        if article_id is None or self.holder(filter_name, article_id) != annotator:
            return None
        try:
            return self._leased(filter_name, annotator, self.item(filter_name, article_id))
        except NotQueuedError:
            return None

    def release(self, filter_name: str, annotator: str, article_id: str) -> None:
        self._release(keys=[self._k("lease", filter_name, article_id), self._k("held", filter_name, annotator)],
                      args=[annotator, article_id])

    def _finish(self, filter_name: str, annotator: str, article_id: str) -> bool:
        f = filter_name
        return bool(self._complete(
            keys=[self._k("queue", f), self._k("items", f), self._k("done", f, article_id),
                  self._k("skipped", f, article_id), self._k("lease", f, article_id), self._k("held", f, annotator)],
            args=[article_id, annotator, self.overlap]))

    # -- answers -------------------------------------------------------------------------------------

    def submit(self, filter_name: str, annotator: str, article_id: str, scores: Mapping[str, Any],
               note: str | None = None) -> Submitted:
        """Store one person's label for an item they hold (or whose expired lease nobody took since)."""
        item = self.item(filter_name, article_id)
        clean = validate_scores(item, scores)
        note = (note or "").strip() or None
        if note is not None and len(note) > self.note_max:
            raise InvalidLabelError(f"the note is {len(note)} characters; at most {self.note_max}",
                                    filter=filter_name)
        state = self._acquire(keys=[self._k("lease", filter_name, article_id),
                                    self._k("held", filter_name, annotator)],
                              args=[annotator, self.lease_ms, article_id])
        if not state:
            raise LeaseLostError(f"your lease on {article_id[:80]!r} expired and it was handed to someone else",
                                 filter=filter_name)
        label = Label(article_id=article_id, filter=filter_name, source="human", annotator=annotator,
                      scores=clean, text=item.text, title=item.title, note=note, package_version=item.version)
        # The store first: its unique row per (article, filter, source, annotator) is what makes "one
        # person never labels one item twice" hold even across a crash between the two writes.
        stored = self.store.add(label)
        finished = self._finish(filter_name, annotator, article_id)
        if not stored:
            raise AlreadyLabelledError(f"you have labelled {article_id[:80]!r} already", filter=filter_name)
        return Submitted(label, finished)

    def skip(self, filter_name: str, annotator: str, article_id: str) -> None:
        """This annotator passes on the item: it goes back to the others and is not offered to them again."""
        f = self.check_filter(filter_name)
        self.item(f, article_id)
        self.redis.sadd(self._k("skipped", f, article_id), annotator)
        self.release(f, annotator, article_id)

    # -- what the stats page shows -------------------------------------------------------------------

    def counts(self, filter_name: str) -> tuple[int, int]:
        """(queued, leased) for one filter."""
        self.check_filter(filter_name)
        queued = cast(int, self.redis.zcard(self._k("queue", filter_name)))
        leased = sum(1 for _ in self.redis.scan_iter(match=self._k("lease", filter_name) + ":*", count=500))
        return queued, leased

    def stats(self, filter_name: str) -> QueueStats:
        queued, leased = self.counts(filter_name)
        human = self.store.labels(filter_name, source="human")
        by_annotator: dict[str, int] = {}
        per_item: dict[str, int] = {}
        for label in human:
            by_annotator[label.annotator] = by_annotator.get(label.annotator, 0) + 1
            per_item[label.article_id] = per_item.get(label.article_id, 0) + 1
        return QueueStats(filter=filter_name, queued=queued, leased=leased, human_labels=len(human),
                          by_annotator=dict(sorted(by_annotator.items())), overlap=self.overlap,
                          multi_labelled=sum(1 for n in per_item.values() if n > 1), agreement=agreement(human))
