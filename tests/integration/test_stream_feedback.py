"""The feedback role through the real broker: ``fluxscore worker --role feedback`` reads ``feedback.<filter>``,
stores valid events in the label database once each (a republished event id adds nothing) and dead-letters
the invalid ones with their reason and coordinates.

Events are produced directly (no scoring runs), so the test is one worker starting and a few messages.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.dlq import DeadLetterRecord
from streams.kafka import make_consumer, make_producer
from tests.integration.conftest import StreamEnv, WorkerProcess
from training.labels import LabelStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
AT = "2026-12-01T10:00:00Z"

VALID: list[dict[str, Any]] = [
    {"article_id": "a-1", "event": "click", "at": AT, "id": "ev-click-1"},
    {"article_id": "a-2", "event": "share", "weight": 2.0, "at": "2026-12-01T11:00:00+01:00", "id": "ev-share-1"},
    {"article_id": "a-3", "event": "correction", "at": AT, "id": "ev-corr-1",
     "scores": {"wellbeing": 7.5, "evidence": 3.0}},
    {"article_id": "a-4", "event": "dwell", "weight": 42.0, "at": AT},   # no id: one event per topic offset
]
# (payload, what the dead letter's message must say, the article id it must name)
INVALID: list[tuple[bytes, str, str | None]] = [
    (b"{not json", "Invalid JSON", None),
    (orjson.dumps({"article_id": "b-1", "event": "click", "at": "2026-12-01T10:00:00"}), "time zone", "b-1"),
    (orjson.dumps({"article_id": "b-2", "event": "correction", "at": AT, "scores": {"colour": 3.0}}),
     "['colour']", "b-2"),
    (orjson.dumps({"article_id": "b-3", "event": "click", "at": AT, "weight": -1}), "weight", "b-3"),
]


async def _produce(env: StreamEnv, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(env.bootstrap, max_batch_bytes=1)
    await producer.start()
    try:
        for key, value in messages:
            await (await producer.send(env.topic("feedback.demo"), value=value, key=key))
    finally:
        await producer.stop()


async def _dead_letters(env: StreamEnv, n: int, timeout: float) -> list[DeadLetterRecord]:
    consumer = make_consumer(env.bootstrap, env.topic("articles.dlq"))
    await consumer.start()
    dead: list[DeadLetterRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(dead) < n:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                dead += [DeadLetterRecord.parse(m.value, list(m.headers or [])) for m in messages]
    finally:
        await consumer.stop()
    return dead


def _wait_for_totals(worker: WorkerProcess, wanted: dict[str, int], timeout: float) -> dict[str, int]:
    """The last ``feedback stored`` totals once they reach ``wanted`` (stored, duplicate… per filter)."""
    deadline = time.monotonic() + timeout
    totals: dict[str, int] = {}
    while time.monotonic() < deadline:
        logged = [line["totals"] for line in worker.log_lines() if line.get("msg") == "feedback stored"]
        totals = logged[-1] if logged else {}
        if all(totals.get(k, 0) >= v for k, v in wanted.items()):
            return totals
        if worker.proc is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}):\n{worker.tail()}")
        time.sleep(0.2)
    raise AssertionError(f"feedback totals {totals} did not reach {wanted} within {timeout} s:\n{worker.tail()}")


def test_feedback_role_stores_valid_events_once_and_dead_letters_the_rest(
        stream_env: StreamEnv, workers: Any, tmp_path: Path) -> None:
    db = tmp_path / "labels.db"
    env = stream_env.env(FLUXSCORE_FILTERS="demo", FLUXSCORE_LABELS_DB=str(db))
    worker = workers(env, "feedback")
    topic = stream_env.topic("feedback.demo")
    worker.wait_for_partitions(topic, timeout=60)

    messages: list[tuple[bytes | None, bytes]] = [(e["article_id"].encode(), orjson.dumps(e)) for e in VALID]
    messages.append((b"a-1", orjson.dumps(VALID[0])))   # the click again, same id: a redelivery
    messages += [(None if article is None else article.encode(), payload) for payload, _, article in INVALID]
    asyncio.run(_produce(stream_env, messages))

    totals = _wait_for_totals(worker, {"demo:stored": len(VALID), "demo:duplicate": 1, "demo:dead": len(INVALID)},
                              timeout=40)
    assert totals == {"demo:stored": len(VALID), "demo:duplicate": 1, "demo:dead": len(INVALID)}

    store = LabelStore(db)
    try:
        stored = store.feedback("demo")
    finally:
        store.close()
    assert sorted(s.event.article_id for s in stored) == ["a-1", "a-2", "a-3", "a-4"], "each valid event once"
    by_article = {s.event.article_id: s for s in stored}
    assert by_article["a-1"].key == "id:ev-click-1" and by_article["a-1"].event.weight == 1.0
    assert by_article["a-2"].event.weight == 2.0
    assert by_article["a-2"].event.at.isoformat() == "2026-12-01T10:00:00+00:00"   # stored in UTC
    assert by_article["a-3"].event.scores == {"wellbeing": 7.5, "evidence": 3.0}
    assert by_article["a-4"].key.startswith(f"at:{topic}:") and by_article["a-4"].event.id is None

    dead = asyncio.run(_dead_letters(stream_env, len(INVALID), timeout=20))
    assert len(dead) == len(INVALID)
    assert {d.stage for d in dead} == {"feedback"} and {d.source.topic for d in dead} == {topic}
    by_payload = {d.payload: d for d in dead}
    for payload, reason, article in INVALID:
        letter = by_payload[payload]   # the original bytes come back with the reason
        assert letter.error_type == "training.feedback.FeedbackEventError", letter.error_type
        assert reason in letter.message, (letter.message, reason)
        assert letter.article_id == article
