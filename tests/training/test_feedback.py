"""Feedback events: the schema, the value of engagement, and the label store's feedback table (SQLite, and
PostgreSQL when one answers on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from training.feedback import FeedbackEvent, FeedbackEventError, engagement_value, event_key, sample_weight
from training.labels import Label, LabelStore

AT = "2026-12-01T10:00:00+02:00"


def _ev(**fields: object) -> FeedbackEvent:
    return FeedbackEvent.model_validate({"article_id": "a1", "event": "click", "at": AT, **fields})


def test_parse_accepts_events_and_refuses_bad_ones_in_one_line() -> None:
    event = FeedbackEvent.parse(b'{"article_id": "a1", "event": "dwell", "weight": 42.5, "at": "' + AT.encode() + b'"}')
    assert event.weight == 42.5 and event.at.utcoffset() == timedelta(hours=2)
    assert FeedbackEvent.parse(event.to_json()) == event
    for payload, needle in [(b'{"article_id": "a1", "event": "click"}', "at"),
                            (b'{"article_id": "", "event": "click", "at": "' + AT.encode() + b'"}', "article_id"),
                            (b'{"article_id": "a1", "event": "Click!", "at": "' + AT.encode() + b'"}', "event"),
                            (b'{"article_id": "a1", "event": "click", "at": "2026-12-01T10:00:00"}', "time zone"),
                            (b'{"article_id": "a1", "event": "click", "at": "' + AT.encode() + b'", "x": 1}', "x"),
                            (b'{"article_id": "a1", "event": "correction", "scores": {"d": 11}, "at": "'
                             + AT.encode() + b'"}', "0..10"),
                            (b'{"article_id": "a1", "event": "click", "scores": {"d": 1}, "at": "'
                             + AT.encode() + b'"}', "only a correction"),
                            (b"[1, 2]", "event")]:
        with pytest.raises(FeedbackEventError, match=needle) as info:
            FeedbackEvent.parse(payload)
        assert "\n" not in str(info.value)
    with pytest.raises(FeedbackEventError) as info:
        FeedbackEvent.parse(b'{"article_id": "a9", "event": "click", "weight": -2, "at": "' + AT.encode() + b'"}')
    assert info.value.context["article_id"] == "a9"


def test_engagement_value_and_weights() -> None:
    events = [_ev(event="share", weight=2.0), _ev(event="click", weight=3.0), _ev(article_id="a2", event="report"),
              _ev(article_id="a3", event="like", weight=100.0)]
    value = engagement_value(events, {"share": 3.0, "click": 0.5, "report": -4.0})
    assert value == {"a1": 7.5, "a2": -4.0}
    assert [sample_weight(value.get(a, 0.0), floor=0.2, cap=5.0) for a in ("a1", "a2", "a3")] == [5.0, 0.2, 1.0]


def test_the_store_keeps_each_event_once_and_reads_a_window() -> None:
    store = LabelStore("sqlite://")
    older = _ev(at="2026-11-01T00:00:00Z")
    named = _ev(id="ev-7", event="share")
    added = store.add_feedback("f", [(older, event_key(older, "feedback.f", 0, 1)),
                                     (named, event_key(named, "feedback.f", 0, 2))])
    # Redelivered (same offset), and the named event again at another offset: both are the same events.
    again = store.add_feedback("f", [(older, event_key(older, "feedback.f", 0, 1)),
                                     (named, event_key(named, "feedback.f", 3, 99))])
    assert (added, again) == (2, 0)
    assert len(store.feedback("f")) == 2 and store.feedback("g") == []
    window = store.feedback("f", since=datetime(2026, 12, 1, tzinfo=UTC))
    assert [s.event for s in window] == [named]
    assert window[0].event.at == datetime(2026, 12, 1, 8, tzinfo=UTC)   # stored in UTC, read back aware
    # Human labels by time, for the same window.
    store.add(Label(article_id="x", filter="f", source="human", annotator="a", scores={"d": 1.0},
                    labelled_at=datetime(2026, 11, 30, tzinfo=UTC)))
    store.add(Label(article_id="y", filter="f", source="human", annotator="a", scores={"d": 1.0},
                    labelled_at=datetime(2026, 12, 1, 1, tzinfo=timezone(timedelta(hours=-1)))))
    assert [lb.article_id for lb in store.labels("f", since=datetime(2026, 12, 1, 1, tzinfo=UTC))] == ["y"]


def test_the_feedback_table_in_postgresql() -> None:
    try:
        ok = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c", "select 1"],
                            capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432 (user postgres, database test)")
    store = LabelStore("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"h4c_{uuid.uuid4().hex[:8]}"
    try:
        event = _ev()
        assert store.add_feedback(name, [(event, event_key(event, "t", 0, 0))] * 2) == 1
        assert store.add_feedback(name, [(event, event_key(event, "t", 0, 0))]) == 0
        assert [s.event for s in store.feedback(name)] == [event]
    finally:
        from training.labels import FEEDBACK

        with store.engine.begin() as conn:
            conn.execute(FEEDBACK.delete().where(FEEDBACK.c.filter == name))
        store.close()
