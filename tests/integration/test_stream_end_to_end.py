"""End to end through the real broker and Redis: articles in, exactly one record per (article, filter) out."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scoring.package import resolve
from tests.integration.conftest import STREAM_FILTERS, collect, produce_lines, synthetic_articles

pytestmark = pytest.mark.integration

N_ARTICLES = 1000


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def test_thousand_articles_one_record_per_pair(stream_env, workers, tmp_path: Path) -> None:
    env = stream_env.env(FLUXSCORE_METRICS_PORT="0")
    # CPU and GPU roles in separate processes, as deployed: prefilter+probe in one, the students in another.
    front = workers(env, "prefilter", "probe")
    workers(stream_env.env(), "model")
    lines = synthetic_articles(N_ARTICLES)
    ids = {orjson.loads(line)["id"] for line in lines}
    assert len(ids) == N_ARTICLES
    started = time.monotonic()
    assert produce_lines(stream_env, lines, tmp_path / "articles.jsonl") == N_ARTICLES

    expected = {(i, f) for i in ids for f in STREAM_FILTERS}
    got = collect(stream_env, lambda c: len(c.records) >= len(expected), timeout=420)
    elapsed = time.monotonic() - started

    assert got.dead == []
    assert got.pairs == expected, f"missing {len(expected - got.pairs)} pairs after {elapsed:.0f} s"
    assert all(len(values) == 1 for values in got.records.values()), "a key was emitted twice"
    assert len(got.records) == len(expected)

    packages = {name: resolve(name) for name in STREAM_FILTERS}
    stages: Counter[str] = Counter()
    probed = 0
    for key, (value,) in got.records.items():
        record = orjson.loads(value)
        package = packages[record["filter"]["name"]]
        assert key.decode() == f"{record['article_id']}|{package.name}|{package.package_hash}|{record['text_hash']}"
        assert got.kafka_keys[key].decode() == record["article_id"], "score messages are keyed by article id"
        assert record["filter"] == {"name": package.name, "version": package.version,
                                    "package_hash": package.package_hash}
        assert record["model_hashes"], "provenance names the model files"
        stages[record["stage"]] += 1
        # On Kafka the timings travel in a header, so that the body is the same on every rescoring.
        assert record["scored_at"] is None and record["timings_ms"] == {}
        probed += "probe" in orjson.loads(got.headers[key]["fluxscore.timings_ms"])
    assert stages["stage1"] > 0

    url = front.wait_for_log("metrics served")["url"]
    text = httpx.get(url, timeout=5).text
    assert _metric(text, "fluxscore_stream_messages_in_total", stage="prefilter") == N_ARTICLES
    assert _metric(text, "fluxscore_stream_batch_size_count", stage="probe") > 0
    assert _metric(text, "fluxscore_stream_batch_seconds_count", stage="prefilter") > 0
    # Every pair that reached the probe (its timings say so) was counted there, escalations among them.
    assert _metric(text, "fluxscore_stream_probed_total") == probed > 0
    assert _metric(text, "fluxscore_stream_escalated_total") == stages["stage2"]
    assert _metric(text, "fluxscore_stream_dlq_total") == 0
    # Lag is sampled every 5 s: once everything is scored it drops to zero on every raw partition.
    raw = stream_env.topic("articles.raw")
    deadline = time.monotonic() + 20
    while True:
        text = httpx.get(url, timeout=5).text
        lags = [s for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "fluxscore_stream_consumer_lag" and s.labels["topic"] == raw]
        if (len(lags) == 4 and sum(s.value for s in lags) == 0) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(lags) == 4 and sum(s.value for s in lags) == 0, lags

