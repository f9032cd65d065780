"""Drift monitoring: a shift in what arrives (mostly shopping content) shows up in the drift reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from streams.kafka import make_consumer
from tests.integration.conftest import STREAM_FILTERS, collect, produce_lines

pytestmark = pytest.mark.integration


def _articles(n: int, seed: int, commerce: float) -> list[bytes]:
    from training.synth import SynthConfig, generate, strip_labels

    return [orjson.dumps(strip_labels(r)) for r in generate(SynthConfig(n=n, seed=seed, commerce_fraction=commerce))]


async def _reports(bootstrap: str, topic: str, want: int, timeout: float) -> list[dict]:
    consumer = make_consumer(bootstrap, topic)
    await consumer.start()
    got: list[dict] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < want:
                for messages in (await consumer.getmany(timeout_ms=300)).values():
                    got.extend(orjson.loads(m.value) for m in messages)
    finally:
        await consumer.stop()
    return got


def test_monitor_reports_drift_when_the_mix_shifts(stream_env, workers, tmp_path: Path) -> None:
    workers(stream_env.env())
    monitor = workers(stream_env.env(FLUXSCORE_MONITOR_REFERENCE_SIZE="100", FLUXSCORE_MONITOR_WINDOW="100",
                                     FLUXSCORE_MONITOR_EVERY="100", FLUXSCORE_METRICS_PORT="0"), "monitor")
    produce_lines(stream_env, _articles(120, seed=61, commerce=0.0), tmp_path / "news.jsonl")
    collect(stream_env, lambda c: len(c.records) >= 120 * len(STREAM_FILTERS), timeout=180, settle=0)
    produce_lines(stream_env, _articles(120, seed=62, commerce=0.9), tmp_path / "shopping.jsonl")

    reports = asyncio.run(_reports(stream_env.bootstrap, stream_env.topic("monitor.drift"), len(STREAM_FILTERS), 180))
    assert {r["filter"] for r in reports} == set(STREAM_FILTERS)
    for report in reports:
        assert report["reference_rows"] == 100 and report["current_rows"] == 100
        # What arrives changed, not how the models score what they see: the stage mix and the score
        # distribution drift, the per-dimension scores of scored articles need not.
        for column in ("stage", "tier", "weighted_average"):
            assert report["columns"][column]["drifted"], (column, report["columns"])
        assert report["current_share"]["stage"].get("commerce", 0) > 0.5
    line = monitor.wait_for_log("drift report")
    assert line["filter"] in STREAM_FILTERS and line["drifted_share"] > 0
