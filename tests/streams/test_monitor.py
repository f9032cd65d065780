"""Drift windows, Evidently reports, alerts and gauges over score records (no broker, no model)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest

from scoring.aggregate import Tier
from scoring.records import DimensionScore, FilterRef, InputStats, PrefilterResult, ScoreRecord, StageUsed
from streams.drift.windows import SAMPLE_TEXT_CHARS, SEEN_KEYS, DriftTracker
from streams.metrics import StreamMetrics
from streams.monitor import MIN_VALUES, DriftMonitor, drift_report
from streams.settings import StreamSettings
from streams.topics import Topics


def _records(n: int, mean: float, *, seed: int, start: int = 0, package_hash: str = "h1", stage2_share: float = 0.2,
             spread: float = 1.0, blocked_share: float = 0.1, commerce_share: float = 0.05,
             languages: tuple[str, ...] = ("en", "nl", "de"), weights: tuple[float, ...] = (0.6, 0.25, 0.15),
             ) -> list[ScoreRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        value = float(np.clip(rng.normal(mean, spread), 0, 10))
        draw = rng.random()
        stage = (StageUsed.PREFILTER if draw < blocked_share else StageUsed.COMMERCE
                 if draw < blocked_share + commerce_share else StageUsed.STAGE2 if rng.random() < stage2_share
                 else StageUsed.STAGE1)
        scored = stage in (StageUsed.STAGE1, StageUsed.STAGE2)
        tier = Tier.HIGH if value >= 7 else Tier.MEDIUM if value >= 4 else Tier.LOW
        out.append(ScoreRecord(
            article_id=f"a{start + i}", filter=FilterRef(name="demo", version="1.0.0", package_hash=package_hash),
            model_hashes={}, stage=stage, weighted_average=round(value, 4) if scored else 0.0,
            tier=tier if scored else Tier.LOW,
            dimensions={"wellbeing": DimensionScore(raw=value, calibrated=value),
                        "reach": DimensionScore(raw=value / 2, calibrated=value / 2)} if scored else {},
            prefilter=PrefilterResult(passed=stage != StageUsed.PREFILTER),
            input=InputStats(text_chars=int(rng.integers(300, 4000)),
                             language=str(rng.choice(languages, p=np.asarray(weights) / sum(weights))))))
    return out


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, dict[str, Any]]] = []

    async def __call__(self, topic: str, key: bytes | None, value: bytes, headers: object) -> Any:
        self.messages.append((topic, key, orjson.loads(value)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)  # a send returns the delivery's future, as Faust's producer does
        return done

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [m for t, _, m in self.messages if t == topic]


def _monitor(reference: list[ScoreRecord] | None = None, send: Any = None, metrics: StreamMetrics | None = None,
             **kwargs: Any) -> DriftMonitor:
    async def unused(topic: str, key: bytes | None, value: bytes, headers: object) -> Any:
        raise AssertionError("no sending in this test")

    options: dict[str, Any] = {"reference_size": 200, "window": 200, "every": 100, **kwargs}
    return DriftMonitor(Topics.from_settings(StreamSettings.from_env({})), send or unused, metrics or StreamMetrics(),
                        reference=reference or [], **options)


def test_same_distribution_does_not_drift_shifted_one_does() -> None:
    monitor = _monitor()
    calm_records = _records(200, 5.0, seed=1, blocked_share=0, commerce_share=0, languages=("en",), weights=(1,))
    calm_records += _records(200, 5.0, seed=2, start=200, blocked_share=0, commerce_share=0, languages=("en",),
                             weights=(1,))
    for r in calm_records:
        monitor.add(r)
    assert monitor.due() == ["demo"]
    calm = drift_report("demo", monitor.filters["demo"])
    assert calm["reference_rows"] == 200 and calm["current_rows"] == 200
    # One-valued columns (every record passed, one language) are not tested: there is nothing to compare.
    assert set(calm["columns"]) == {"weighted_average", "dim.wellbeing", "dim.reach", "text_chars", "tier", "stage"}
    assert not calm["drift_detected"] and calm["status"] == "ok" and calm["reference"]["kind"] == "window"

    for r in _records(200, 7.5, seed=3, start=400, stage2_share=0.8, blocked_share=0, commerce_share=0,
                      languages=("en",), weights=(1,)):
        monitor.add(r)
    shifted = drift_report("demo", monitor.filters["demo"])
    assert shifted["drift_detected"]
    assert shifted["columns"]["weighted_average"]["drifted"] and shifted["columns"]["stage"]["drifted"]
    assert shifted["current_share"]["stage"]["stage2"] > 0.6
    assert {a["rule"] for a in shifted["alerts"]} >= {"escalation_rate", "column_drift"}


def test_repeats_are_ignored_and_a_new_version_restarts_the_reference() -> None:
    monitor = _monitor()
    records = _records(50, 5.0, seed=4)
    assert all(monitor.add(r) for r in records)
    assert not any(monitor.add(r) for r in records), "a re-emitted record counts once"
    assert len(monitor.filters["demo"].reference) == 50
    monitor.add(_records(1, 5.0, seed=5, start=999, package_hash="h2")[0])
    windows = monitor.filters["demo"]
    assert windows.package_hash == "h2" and len(windows.reference) == 1 and not windows.current


def test_a_reference_file_fixes_the_reference() -> None:
    monitor = _monitor(reference=_records(100, 5.0, seed=6, start=5000))
    for r in _records(MIN_VALUES, 5.0, seed=7):
        monitor.add(r)
    windows = monitor.filters["demo"]
    assert len(windows.reference) == 100 and len(windows.current) == MIN_VALUES
    assert windows.reference_kind == "file"


SHIFTS: dict[str, dict[str, Any]] = {
    "score_collapse": {"mean": 0.6, "spread": 0.3},
    "escalation_rate": {"stage2_share": 0.5},
    "prefilter_pass_rate": {"blocked_share": 0.4},
    "commerce_block_rate": {"commerce_share": 0.25},
    "language_mix": {"languages": ("en", "nl", "de", "fr"), "weights": (0.2, 0.2, 0.1, 0.5)},
}


@pytest.mark.parametrize("rule", sorted(SHIFTS))
def test_a_silent_failure_alerts_within_one_window(rule: str) -> None:
    send = Sent()
    monitor = _monitor(send=send, reference_size=300, window=200, every=200)
    for r in _records(300, 5.0, seed=10):
        monitor.add(r)
    shift = {"mean": 5.0, **SHIFTS[rule]}
    results = asyncio.run(_feed(monitor, _records(200, seed=11, start=300, **shift)))
    assert len(results) == 1, "exactly one window"
    assert rule in {a.rule for a in results[0].alerts}, results[0].summary["alerts"]
    alerts = send.on("monitor.alerts")
    assert rule in {a["rule"] for a in alerts}
    assert all(a["filter"] == "demo" and a["window"] == 1 and a["reference_kind"] == "window" for a in alerts)
    assert send.on("monitor.drift")[0]["status"] in ("alert", "critical")


async def _feed(monitor: DriftMonitor, records: list[ScoreRecord]) -> list[Any]:
    out = []
    for r in records:
        monitor.add(r)
        out += await monitor.report_due()
    return out


def test_a_same_distribution_stream_raises_no_alert_over_many_windows() -> None:
    send = Sent()
    monitor = _monitor(send=send, reference_size=500, window=300, every=150)
    records = _records(500 + 150 * 30, 5.0, seed=20)
    results = asyncio.run(_feed(monitor, records))
    assert len(results) == 30
    assert not send.on("monitor.alerts"), [a["rule"] for a in send.on("monitor.alerts")]
    assert all(r.summary["status"] == "ok" for r in results)


def test_gauges_drop_categories_an_earlier_window_had() -> None:
    metrics = StreamMetrics()
    monitor = _monitor(send=Sent(), metrics=metrics, reference_size=100, window=100, every=100)
    asyncio.run(_feed(monitor, _records(200, 5.0, seed=30, languages=("en", "fr"), weights=(0.5, 0.5))))
    asyncio.run(_feed(monitor, _records(100, 5.0, seed=31, start=200, blocked_share=0, commerce_share=0,
                                        languages=("en",), weights=(1,))))

    def shares(column: str) -> dict[str, float]:
        return {s.labels["category"]: s.value for m in metrics.registry.collect()
                if m.name == "fluxscore_drift_window_share" for s in m.samples
                if s.labels["filter"] == "demo" and s.labels["column"] == column}

    stages, languages = shares("stage"), shares("language")
    assert set(stages) == {"stage1", "stage2"} and sum(stages.values()) == pytest.approx(1.0, abs=1e-3)
    assert languages == {"en": 1.0}
    fired = {s.labels["rule"]: s.value for m in metrics.registry.collect() if m.name == "fluxscore_drift_alert"
             for s in m.samples}
    assert fired["language_mix"] == 1.0 and fired["score_collapse"] == 0.0


def test_windows_by_time_and_bounded_memory() -> None:
    now = [0.0]
    tracker = DriftTracker(reference_size=50, window=60, every=10_000, interval=30.0, max_age=100.0, sample_size=5,
                           clock=lambda: now[0])
    for r in _records(50 + 40, 5.0, seed=40):
        tracker.add(r)
    assert tracker.due() == [], "neither 10,000 records nor 30 s yet"
    now[0] = 31.0
    assert tracker.due() == [("demo", "time")]
    pending = tracker.take("demo", "time")
    assert pending.inputs.trigger == "time" and len(pending.inputs.rows) == 40
    assert tracker.due() == [], "no new record since"
    for r in _records(100, 5.0, seed=41, start=1000):
        tracker.add(r)
    windows = tracker.filters["demo"]
    assert len(windows.current) == 60 and len(windows.reference) == 50
    now[0] = 200.0
    assert tracker.due() == [] and not windows.current, "rows older than max_age leave the window"
    for _ in range(20):
        tracker.add_text(["demo"], "x" * (SAMPLE_TEXT_CHARS * 3))
    assert len(windows.texts) == 5 and all(len(t) <= SAMPLE_TEXT_CHARS + 2 for t in windows.texts)
    for r in _records(SEEN_KEYS // 1000 + 10, 5.0, seed=42, start=10_000):
        tracker.add(r)
    assert len(tracker._seen) <= SEEN_KEYS


def test_a_failing_report_costs_its_window_only(monkeypatch: pytest.MonkeyPatch) -> None:
    send = Sent()
    monitor = _monitor(send=send, reference_size=100, window=100, every=100)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("evidently broke")

    monkeypatch.setattr(monitor.tracker, "run", broken)
    assert asyncio.run(_feed(monitor, _records(200, 5.0, seed=50))) == []
    assert not send.messages
