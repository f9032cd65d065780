"""Engagement and correction events that downstream consumers publish about scored articles.

A consumer of ``scores.<filter>`` (a reader app, a newsletter tool, an editor's desk) publishes what
happened to an article on ``feedback.<filter>``: one JSON object per event,

``{"article_id": "a1", "event": "share", "weight": 1.0, "at": "2026-12-01T10:00:00Z"}``

or, for a correction of the scores by a person, ``"event": "correction"`` with ``"scores": {dim: 0-10}``.
The ``feedback`` worker role (:mod:`streams.feedback`) validates each event (:meth:`FeedbackEvent.parse`:
bad ones are dead-lettered with the reason) and stores it in the label database
(:meth:`training.labels.LabelStore.add_feedback`), once per event id — or per topic/partition/offset for
events without one, so a redelivered message is stored once.

Events name an article only by id: they carry no text and never become labels by themselves. The
feedback initiative (:mod:`training.evolve.initiatives.feedback`) turns corrections into training rows
(the text comes from the label store or the round's data) and engagement into the weight of rows that
have a label (:func:`engagement_value`).

>>> event = FeedbackEvent.parse(b'{"article_id": "a1", "event": "share", "weight": 2, "at": "2026-12-01T10:00:00Z"}')
>>> event.event, event.weight, event.at.isoformat()
('share', 2.0, '2026-12-01T10:00:00+00:00')
>>> engagement_value([event], {"share": 3.0})
{'a1': 6.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from training.exceptions import TrainingDataError

CORRECTION = "correction"


class FeedbackEventError(TrainingDataError):
    """A feedback message is not a valid event (names the article id when the message has one)."""


class FeedbackEvent(BaseModel):
    """One event about one article, as published on ``feedback.<filter>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    article_id: str = Field(min_length=1, max_length=512, description="the id of the scored article")
    event: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$",
                       description="what happened: click, share, dwell, report, correction, or the consumer's own")
    weight: float = Field(1.0, ge=0.0, description="the event's strength (e.g. dwell seconds, a count); the "
                                                   "value of an event kind, with its sign, is the plan's")
    at: datetime = Field(description="when it happened, ISO 8601 with a time zone")
    scores: dict[str, float] | None = Field(None, description="a person's scores (0-10) per dimension: corrections")
    id: str | None = Field(None, min_length=1, max_length=256,
                           description="the publisher's event id: the same id is stored once")

    @field_validator("weight")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("weight must be a finite number")
        return value

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # A time without a zone is ambiguous across the consumers that publish: refuse it, do not guess.
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("at needs a time zone, e.g. 2026-12-01T10:00:00Z")
        return value

    @field_validator("scores")
    @classmethod
    def _in_range(cls, scores: dict[str, float] | None) -> dict[str, float] | None:
        if scores is None:
            return None
        if not scores:
            raise ValueError("scores, when given, needs at least one dimension")
        for name, value in scores.items():
            if not (math.isfinite(value) and 0.0 <= value <= 10.0):
                raise ValueError(f"score of {name!r} must be within 0..10, got {value}")
        return {k: float(v) for k, v in scores.items()}

    @model_validator(mode="after")
    def _correction_has_scores(self) -> FeedbackEvent:
        if self.event == CORRECTION and not self.scores:
            raise ValueError("a correction needs scores")
        if self.event != CORRECTION and self.scores is not None:
            raise ValueError(f"only a correction carries scores, not a {self.event!r} event")
        return self

    @classmethod
    def parse(cls, payload: bytes | str) -> FeedbackEvent:
        """The event in a message, or :class:`FeedbackEventError` with one line saying what is wrong."""
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "event"
            article_id = _article_id_of(payload)
            raise FeedbackEventError(f"invalid feedback event: {where}: {first['msg']}"
                                     + (f" ({len(exc.errors())} problems)" if len(exc.errors()) > 1 else ""),
                                     article_id=article_id) from None

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def _article_id_of(payload: bytes | str) -> str | None:
    import orjson

    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    value = body.get("article_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class StoredFeedback:
    """An event as the label store keeps it: the event, its filter and where it was read."""

    filter: str
    event: FeedbackEvent
    key: str                 # the event id, or "<topic>:<partition>:<offset>"
    received_at: datetime


def event_key(event: FeedbackEvent, topic: str, partition: int, offset: int) -> str:
    """What makes an event one event: the publisher's id, else its position in the topic."""
    return f"id:{event.id}" if event.id else f"at:{topic}:{partition}:{offset}"


def engagement_value(events: Iterable[FeedbackEvent], event_weights: Mapping[str, float]) -> dict[str, float]:
    """Per article, the sum over its events of (value of the event kind) x (the event's weight).

    Kinds not in ``event_weights`` count nothing (and corrections are labels, not engagement, unless the
    mapping names them)."""
    out: dict[str, float] = {}
    for event in events:
        value = event_weights.get(event.event)
        if value is None:
            continue
        out[event.article_id] = out.get(event.article_id, 0.0) + float(value) * event.weight
    return out


def sample_weight(value: float, *, floor: float, cap: float) -> float:
    """The training weight of a labelled row with engagement ``value``: 1 (labelled, no engagement) plus the
    value, kept within [floor, cap] so a viral article cannot drown the rest nor a report erase a label.

    >>> sample_weight(0.0, floor=0.1, cap=10), sample_weight(5.0, floor=0.1, cap=4), sample_weight(-3, floor=0.1, cap=4)
    (1.0, 4.0, 0.1)
    """
    return float(min(cap, max(floor, 1.0 + value)))

