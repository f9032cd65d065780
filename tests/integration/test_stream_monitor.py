"""Drift monitoring: a shift in what arrives (mostly shopping content) shows up in the drift reports, as an
alert on ``monitor.alerts`` and as saved Evidently reports."""

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


async def _read(bootstrap: str, topic: str, done: object, timeout: float) -> list[dict]:
    consumer = make_consumer(bootstrap, topic)
    await consumer.start()
    got: list[dict] = []
    try:
        async with asyncio.timeout(timeout):
            while not done(got):  # type: ignore[operator]
                for messages in (await consumer.getmany(timeout_ms=300)).values():
                    got.extend(orjson.loads(m.value) for m in messages)
    finally:
        await consumer.stop()
    return got


def test_monitor_reports_drift_when_the_mix_shifts(stream_env, workers, tmp_path: Path) -> None:
    from evidently.core.report import Snapshot

    reports = tmp_path / "reports"
    workers(stream_env.env())
    # The pinned production window: the first 100 records of each filter are the reference.
    monitor = workers(stream_env.env(FLUXSCORE_MONITOR_REFERENCE_SIZE="100", FLUXSCORE_MONITOR_WINDOW="100",
                                     FLUXSCORE_MONITOR_EVERY="100", FLUXSCORE_MONITOR_INTERVAL="0",
                                     FLUXSCORE_MONITOR_REFERENCE="window", FLUXSCORE_MONITOR_REPORTS_DIR=str(reports),
                                     FLUXSCORE_METRICS_PORT="0"), "monitor")
    produce_lines(stream_env, _articles(120, seed=61, commerce=0.0), tmp_path / "news.jsonl")
    collect(stream_env, lambda c: len(c.records) >= 120 * len(STREAM_FILTERS), timeout=180, settle=0)
    produce_lines(stream_env, _articles(120, seed=62, commerce=0.9), tmp_path / "shopping.jsonl")

    summaries = asyncio.run(_read(stream_env.bootstrap, stream_env.topic("monitor.drift"),
                                  lambda got: len(got) >= len(STREAM_FILTERS), 180))
    assert {r["filter"] for r in summaries} == set(STREAM_FILTERS)
    for report in summaries:
        assert report["reference_rows"] == 100 and report["current_rows"] == 100
        assert report["reference"]["kind"] == "window" and report["window"]["seq"] == 1
        # What arrives changed, not how the models score what they see: the stage mix and the score
        # distribution drift, the per-dimension scores of scored articles need not.
        for column in ("stage", "tier", "weighted_average"):
            assert report["columns"][column]["drifted"], (column, report["columns"])
        assert report["current_share"]["stage"].get("commerce", 0) > 0.5
        assert report["status"] in ("alert", "critical")
        saved = report["report"]
        assert Snapshot.load(saved["snapshot"]).dict()["metrics"], "the snapshot reloads"
        assert Path(saved["html"]).stat().st_size > 10_000
    alerts = asyncio.run(_read(stream_env.bootstrap, stream_env.topic("monitor.alerts"),
                               lambda got: {a["filter"] for a in got if a["rule"] == "commerce_block_rate"}
                               == set(STREAM_FILTERS), 60))
    assert all(a["window"] == 1 and a["severity"] in ("warning", "critical") for a in alerts)
    line = monitor.wait_for_log("drift report")
    assert line["filter"] in STREAM_FILTERS and line["drifted_share"] > 0 and line["status"] != "ok"
    assert monitor.wait_for_log("drift alert")["rule"]
