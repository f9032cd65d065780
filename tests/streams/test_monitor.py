"""Drift windows and Evidently reports over score records (no broker needed)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import numpy as np

from scoring.aggregate import Tier
from scoring.records import DimensionScore, FilterRef, PrefilterResult, ScoreRecord, StageUsed
from streams.metrics import StreamMetrics
from streams.monitor import MIN_VALUES, DriftMonitor, drift_report
from streams.settings import StreamSettings
from streams.topics import Topics


def _records(n: int, mean: float, *, seed: int, start: int = 0, package_hash: str = "h1",
             stage2_share: float = 0.2) -> list[ScoreRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        value = float(np.clip(rng.normal(mean, 1.0), 0, 10))
        stage = StageUsed.STAGE2 if rng.random() < stage2_share else StageUsed.STAGE1
        tier = Tier.HIGH if value >= 7 else Tier.MEDIUM if value >= 4 else Tier.LOW
        out.append(ScoreRecord(
            article_id=f"a{start + i}", filter=FilterRef(name="demo", version="1.0.0", package_hash=package_hash),
            model_hashes={}, stage=stage, weighted_average=round(value, 4), tier=tier,
            dimensions={"wellbeing": DimensionScore(raw=value, calibrated=value),
                        "reach": DimensionScore(raw=value / 2, calibrated=value / 2)},
            prefilter=PrefilterResult(passed=True)))
    return out


def _monitor(reference: list[ScoreRecord] | None = None) -> DriftMonitor:
    async def unused(topic: str, key: bytes | None, value: bytes, headers: object) -> Awaitable[Any]:
        raise AssertionError("no sending in this test")

    return DriftMonitor(Topics.from_settings(StreamSettings.from_env({})), unused, StreamMetrics(),
                        reference_size=200, window=200, every=100, reference=reference or [])


def test_same_distribution_does_not_drift_shifted_one_does() -> None:
    monitor = _monitor()
    for r in _records(200, 5.0, seed=1) + _records(200, 5.0, seed=2, start=200):
        monitor.add(r)
    assert monitor.due() == ["demo"]
    calm = drift_report("demo", monitor.filters["demo"])
    assert calm["reference_rows"] == 200 and calm["current_rows"] == 200
    assert set(calm["columns"]) == {"weighted_average", "dim.wellbeing", "dim.reach", "tier", "stage"}
    assert not calm["drift_detected"]

    for r in _records(200, 7.5, seed=3, start=400, stage2_share=0.8):
        monitor.add(r)
    shifted = drift_report("demo", monitor.filters["demo"])
    assert shifted["drift_detected"]
    assert shifted["columns"]["weighted_average"]["drifted"] and shifted["columns"]["stage"]["drifted"]
    assert shifted["current_share"]["stage"]["stage2"] > 0.6


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
