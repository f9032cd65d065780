"""The oracle role's batch handling against the fake LLM API on a loopback socket, a real redis-server and a
real (SQLite) label store, with a recording sender in place of Kafka: every item ends labelled or rejected
with a reason, an outage is waited out, and a redelivered batch asks nothing twice."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from scoring.package import FilterPackage
from streams.agents import Inbound
from streams.dlq import DeadLetterRecord, Source
from streams.metrics import StreamMetrics
from streams.oracle_worker import STATUS_HEADER, OracleRunner, RejectionMarks
from streams.settings import StreamSettings
from streams.topics import Topics
from tests.integration.conftest import redis_url
from tests.streams.conftest import Sent
from training.labels import Label, LabelStore, Priority, QueueItem
from training.oracle import Oracle, OracleSettings
from training.oracle.fake import USAGE_IN, USAGE_OUT, OracleServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
KEY = "sk-test-worker-0123456789"
KEY_ENV = "FLUXSCORE_TEST_ORACLE_KEY"
_n = itertools.count()



@pytest.fixture
def server() -> Iterator[OracleServer]:
    srv = OracleServer(KEY, hang=1.5).start()
    srv.retry_after = "0.4"
    yield srv
    srv.stop()


def _item(case: str, key: str, score: float = 0.5) -> QueueItem:
    return QueueItem(article_id=key, filter="toy", version="1.0.0", package_hash="h1", title=f"Title {key}",
                     text=f"Title {key}\n\ncase:{case} key:{key} and some body text.", weighted_average=6.0,
                     tier="MEDIUM", stage="stage2", dimensions={"alpha": 6.0, "beta": 6.0},
                     priority=Priority(score=score), record_key=f"{key}|toy|h1", queued_at=datetime.now(UTC))


def _batch(*payloads: bytes) -> list[Inbound]:
    return [Inbound(p, Source("active-learning.toy", 0, i)) for i, p in enumerate(payloads)]


def _runner(package: FilterPackage, server: OracleServer, tmp_path: Path, redis_server: Any, *,
            give_up: float = 0.0, **oracle: Any) -> tuple[OracleRunner, Sent]:
    values: dict[str, Any] = {"provider": "openai", "base_url": server.url + "/v1", "model": "toy-model",
                              "api_key_env": KEY_ENV, "concurrency": 4, "rpm": 0, "max_attempts": 3, "timeout": 0.8,
                              "backoff": 0.01, "max_wait": 2.0, "price_input_per_m": 1.0, "price_output_per_m": 2.0}
    values.update(oracle)
    sent: Sent = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None) -> Any:
        sent.append((topic, key, value, list(headers or [])))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    client = aioredis.Redis.from_url(redis_url(redis_server))
    marks = RejectionMarks(client, prefix=f"test-oracle-{next(_n)}", ttl=600)
    runner = OracleRunner({"toy": package}, Oracle(OracleSettings(**values), env={KEY_ENV: KEY}),
                          LabelStore(tmp_path / "labels.db"), marks, Topics.from_settings(StreamSettings.from_env({})),
                          send, StreamMetrics(), give_up=give_up)
    return runner, sent


def _outcomes(sent: Sent) -> dict[str, tuple[str, dict[str, Any], bytes]]:
    """article id -> (status header, body, raw body) of what went to labels.toy (the last one per id)."""
    return {orjson.loads(v)["article_id"]: (dict(h)[STATUS_HEADER].decode(), orjson.loads(v), v)
            for t, _, v, h in sent if t == "labels.toy"}


def test_every_item_ends_labelled_or_rejected_and_a_redelivery_asks_nothing(
        package: FilterPackage, server: OracleServer, tmp_path: Path, redis_server) -> None:
    cases = {"g1": "good", "m1": "malformed", "r1": "range", "t1": "429_once", "s1": "slow_once",
             "f1": "malformed_once"}
    payloads = [_item(case, key).to_json() for key, case in cases.items()]
    batch = _batch(*payloads, b"{not a queue item", _item("good", "x1").to_json().replace(b'"toy"', b'"other"'))

    async def run() -> tuple[Sent, Sent, OracleRunner, float]:
        runner, sent = _runner(package, server, tmp_path, redis_server)
        started = time.monotonic()
        await runner.handle(batch)
        elapsed = time.monotonic() - started
        first = list(sent)
        sent.clear()
        await runner.handle(batch)  # redelivered after a crash before the offsets were committed
        return first, list(sent), runner, elapsed

    first, second, runner, elapsed = asyncio.run(run())
    out = _outcomes(first)
    assert set(out) == set(cases), "every item ends on labels.toy"
    for key in ("g1", "t1", "s1", "f1"):
        status, body, _ = out[key]
        assert status == "labelled", (key, body)
        label = Label.model_validate(body)
        assert label.source == "oracle" and label.annotator == "toy-model" and label.scores == {"alpha": 7.0,
                                                                                                   "beta": 3.5}
        assert label.prompt_hash and len(label.prompt_hash) == 16 and label.package_version == "1.0.0"
        assert label.text.startswith(f"Title {key}") and label.title == f"Title {key}"
    good = Label.model_validate(out["g1"][1])
    assert good.tokens == USAGE_IN + USAGE_OUT and good.cost == pytest.approx((USAGE_IN + 2 * USAGE_OUT) / 1e6)
    assert Label.model_validate(out["f1"][1]).tokens == 2 * (USAGE_IN + USAGE_OUT), "both attempts are paid for"
    assert elapsed >= 0.4, "the 429's Retry-After was waited for"
    status, body, _ = out["m1"]
    assert status == "rejected" and "JSON" in body["reason"] and body["attempts"] == 3 and len(body["errors"]) == 3
    assert body["errors"][0]["raw"].startswith('{"alpha": 7, "beta": 3,,')
    status, body, _ = out["r1"]
    assert status == "rejected" and "alpha: 11.0 outside 0-10" in body["reason"]
    assert {r.article_id for r in runner.store.labels("toy")} == {"g1", "t1", "s1", "f1"}, "labels are stored"
    dead = [DeadLetterRecord.parse(v, h) for t, _, v, h in first if t == "articles.dlq"]
    assert len(dead) == 2 and {d.stage for d in dead} == {"oracle"}
    assert any("other" in d.message for d in dead)

    calls = len(server.seen)
    redelivered = _outcomes(second)
    assert len(server.seen) == calls, "a redelivered batch asks the oracle nothing"
    assert set(redelivered) == {"g1", "t1", "s1", "f1"}, "stored labels are published again; rejections were final"
    for key, (_, _, raw) in redelivered.items():
        assert raw == out[key][2], f"{key}: the stored label is the one published first"
    assert runner.counts[("toy", "republished")] == 4 and runner.counts[("toy", "skipped")] == 2


def test_an_outage_is_waited_out_not_rejected_unless_told_to_give_up(
        package: FilterPackage, server: OracleServer, tmp_path: Path, redis_server) -> None:
    async def run() -> tuple[Sent, Sent]:
        # One attempt each: a 500 or a 429 exhausts it, so the item is "unavailable", and the worker waits.
        patient, sent = _runner(package, server, tmp_path, redis_server, max_attempts=1)
        await patient.handle(_batch(_item("500_once", "o1").to_json(), _item("429_once", "o2").to_json()))
        giving_up, sent2 = _runner(package, server, tmp_path, redis_server, max_attempts=1, give_up=0.3)
        await giving_up.handle(_batch(_item("bad_gateway", "o3").to_json()))
        return sent, sent2

    sent, sent2 = asyncio.run(run())
    out = _outcomes(sent)
    assert {k: v[0] for k, v in out.items()} == {"o1": "labelled", "o2": "labelled"}
    assert len(server.calls("o1")) == 2 and len(server.calls("o2")) == 2
    status, body, _ = _outcomes(sent2)["o3"]
    assert status == "rejected"
    assert body["reason"].startswith("gave up after 0.3 s: the oracle is unavailable: HTTP 502")
