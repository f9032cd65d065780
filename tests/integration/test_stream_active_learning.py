"""Active learning through the real broker and Redis, with worker processes: the selector joins score
records with screened articles and queues the candidates, the oracle worker labels them through the fake
LLM API on loopback — malformed answers, out-of-range scores, 429s with Retry-After and timeouts among
them — and a kill -9 of the oracle worker in the middle loses nothing: every queued item ends labelled
(and stored) or rejected with its reason.

Score records and screened articles are produced directly (no scoring models run), so the test takes
about a minute: two workers starting, one restart, and the fake oracle's deliberate slowness.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from scoring.aggregate import Tier
from scoring.article import parse_article
from scoring.package import resolve
from scoring.pipeline import Screened
from scoring.records import DimensionScore, FilterRef, PrefilterResult, ScoreRecord, StageUsed
from scoring.text import article_text
from streams.kafka import ensure_topics, make_consumer, make_producer
from streams.topics import TopicSpec
from streams.wire import encode_screened
from tests.integration.conftest import StreamEnv, synthetic_articles
from training.labels import LabelStore, QueueItem
from training.oracle.fake import OracleServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
KEY = "sk-test-al-0123456789abcdef"
KEY_ENV = "FLUXSCORE_TEST_ORACLE_KEY"
# What the fake oracle does per candidate (by the marker in its text); "slow" keeps the worker busy long
# enough to be killed in the middle.
CASES = ["malformed", "range", "429_once", "slow_once"] * 2 + ["slow"] * 10
REJECTED = {"malformed", "range"}


def _record(article_id: str, package_hash: str, wa: float, estimate: float) -> ScoreRecord:
    tier = Tier.MEDIUM if wa >= 4 else Tier.LOW
    return ScoreRecord(article_id=article_id, filter=FilterRef(name="demo", version="1.0.0", package_hash=package_hash),
                       model_hashes={}, stage=StageUsed.STAGE2, stage1_estimate=estimate, weighted_average=wa,
                       tier=tier, dimensions={d: DimensionScore(raw=wa, calibrated=wa)
                                              for d in ("wellbeing", "evidence", "reach", "durability")},
                       prefilter=PrefilterResult(passed=True))


async def _produce(env: StreamEnv, messages: list[tuple[str, bytes, bytes]]) -> None:
    await ensure_topics(env.bootstrap, [TopicSpec(env.topic("articles.screened"), 4),
                                        TopicSpec(env.topic("scores.all"), 4)])
    producer = make_producer(env.bootstrap, max_batch_bytes=1)
    await producer.start()
    try:
        for topic, key, value in messages:
            await (await producer.send(env.topic(topic), value=value, key=key))
    finally:
        await producer.stop()


async def _read(env: StreamEnv, topics: list[str], done: Any, timeout: float) -> dict[str, list[Any]]:
    consumer = make_consumer(env.bootstrap, *(env.topic(t) for t in topics))
    await consumer.start()
    got: dict[str, list[Any]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(got):
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                for m in messages:
                    got[m.topic.removeprefix(env.prefix)].append(m)
    finally:
        await consumer.stop()
    return got


def test_candidates_are_queued_and_labelled_and_a_kill_loses_nothing(stream_env, workers, tmp_path) -> None:
    demo = resolve("demo")
    articles = [parse_article(line) for line in synthetic_articles(len(CASES) + 4, seed=91)]
    messages: list[tuple[str, bytes, bytes]] = []
    expected: dict[str, str] = {}
    for i, article in enumerate(articles):
        case = CASES[i] if i < len(CASES) else None
        text = article_text(article) + (f"\n\ncase:{case} key:{article.id}" if case else "")
        screened = Screened(article=article, text=text, open_filters={"demo": PrefilterResult(passed=True)})
        # Candidates at or above the bar (5.5); the last four are below it and must not be queued.
        record = _record(article.id, demo.package_hash, 6.0 + (i % 5) * 0.2 if case else 3.0, 4.0)
        pair = [("articles.screened", article.id.encode(), encode_screened(screened)),
                ("scores.all", article.id.encode(), record.to_json())]
        # Every third record comes before its article: it waits in Redis until the article arrives.
        messages += pair[::-1] if i % 3 == 0 else pair
        if case:
            expected[article.id] = case

    server = OracleServer(KEY, slow_delay=0.6, hang=2.0, dimensions_from_prompt=True).start()
    server.retry_after = "0.5"
    try:
        env = stream_env.env(**{
            "FLUXSCORE_FILTERS": "demo", "FLUXSCORE_LABELS_DB": str(tmp_path / "labels.db"),
            "FLUXSCORE_ORACLE_BASE_URL": server.url + "/v1", "FLUXSCORE_ORACLE_MODEL": "fake-oracle",
            "FLUXSCORE_ORACLE_API_KEY_ENV": KEY_ENV, KEY_ENV: KEY, "FLUXSCORE_ORACLE_RPM": "0",
            "FLUXSCORE_ORACLE_CONCURRENCY": "2", "FLUXSCORE_ORACLE_MAX_ATTEMPTS": "2",
            "FLUXSCORE_ORACLE_TIMEOUT": "1.2", "FLUXSCORE_ORACLE_BACKOFF": "0.05", "FLUXSCORE_ORACLE_MAX_WAIT": "2",
            "FLUXSCORE_ORACLE_WORKER_BATCH": "4", "FLUXSCORE_ORACLE_WORKER_WITHIN": "0.3",
            "FLUXSCORE_SELECTOR_WITHIN": "0.3"})
        selector = workers(env, "selector")
        oracle = workers(env, "oracle")
        asyncio.run(_produce(stream_env, messages))
        oracle.wait_for_partitions(stream_env.topic("active-learning.demo"), timeout=120)

        # Kill the oracle worker once it has labelled a few items, while others are in flight.
        def some_labels(got: dict[str, list[Any]]) -> bool:
            return len(got["labels.demo"]) >= 4
        asyncio.run(_read(stream_env, ["labels.demo"], some_labels, timeout=120))
        oracle.kill9()
        restarted = workers(env, "oracle")

        def all_done(got: dict[str, list[Any]]) -> bool:
            ended = {orjson.loads(m.value)["article_id"] for m in got["labels.demo"]}
            return ended >= expected.keys()
        got = asyncio.run(_read(stream_env, ["active-learning.demo", "labels.demo"], all_done, timeout=150))
        assert restarted.wait_for_log("queue items labelled", timeout=10)["counts"], "the restart labelled the rest"
    finally:
        server.stop()
    selector.stop()

    queued: dict[str, set[bytes]] = {}
    for m in got["active-learning.demo"]:
        queued.setdefault(QueueItem.from_json(m.value).article_id, set()).add(m.value)
    assert queued.keys() == expected.keys(), "every candidate is queued, and nothing below the bar"
    assert all(len(v) == 1 for v in queued.values()), "an item is never queued twice with different contents"
    item = QueueItem.from_json(next(iter(queued[next(iter(expected))])))
    assert item.text and item.priority.uncertainty > 0 and item.priority.novelty > 0

    final: dict[str, tuple[str, dict[str, Any]]] = {}
    for m in got["labels.demo"]:
        final[orjson.loads(m.value)["article_id"]] = (dict(m.headers)["fluxscore.label_status"].decode(),
                                                      orjson.loads(m.value))
    assert final.keys() == expected.keys(), "every queued item ends labelled or rejected"
    for article_id, case in expected.items():
        status, body = final[article_id]
        if case in REJECTED:
            assert status == "rejected", (case, body)
            assert ("outside 0-10" if case == "range" else "JSON") in body["reason"]
        else:
            assert status == "labelled", (case, body)
            assert set(body["scores"]) == {"wellbeing", "evidence", "reach", "durability"}
            assert body["annotator"] == "fake-oracle" and body["prompt_hash"] and body["tokens"] > 0
    stored = LabelStore(tmp_path / "labels.db").labels("demo")
    labelled = {a for a, (status, _) in final.items() if status == "labelled"}
    assert sorted(label.article_id for label in stored) == sorted(labelled), \
        "each label is stored once, the killed worker's included"
    assert any(s.case == "429_once" and s.count == 2 for s in server.seen), "a 429 was retried"
