"""Drift monitoring of the scores (``fluxscore worker --role monitor``), with Evidently.

The monitor reads ``scores.all`` in a consumer group of its own. Per filter it keeps a reference
window (the first ``FLUXSCORE_MONITOR_REFERENCE_SIZE`` records of the live package version, or the
records of ``FLUXSCORE_MONITOR_REFERENCE_FILE``) and a sliding current window; every
``FLUXSCORE_MONITOR_EVERY`` new records it compares the two with Evidently's per-column drift tests —
weighted average, each calibrated dimension, tier and stage used — and publishes the result on the
drift topic (keyed by filter) and as Prometheus gauges. A hot-reloaded package version starts a new
reference: scores of different versions are not the same quantity.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from scoring.records import ScoreRecord
from streams.agents import Inbound
from streams.app import batch_agent, build_app, faust_sender, faust_topic, register_assignment_log, run_faust
from streams.kafka import ensure_topics
from streams.metrics import WAITING_FOR_KAFKA, StreamMetrics, ready_when_started
from streams.outbox import Message, Outbox, Sender
from streams.settings import StreamSettings
from streams.topics import Topics

log = logging.getLogger("fluxscore.streams.monitor")
SCORED = ("stage1", "stage2")
# A column enters a drift test only when both windows hold this many values of it (Evidently refuses
# empty columns, and a test over a handful of values says nothing).
MIN_VALUES = 20
_SEEN_KEYS = 200_000


def _row(record: ScoreRecord) -> dict[str, Any]:
    row: dict[str, Any] = {"weighted_average": record.weighted_average, "tier": record.tier.value,
                           "stage": record.stage.value}
    for name, score in record.dimensions.items():
        row[f"dim.{name}"] = score.calibrated
    return row


@dataclass
class FilterWindows:
    package_hash: str
    version: str
    reference_size: int
    window: int
    reference: list[dict[str, Any]] = field(default_factory=list)
    current: deque[dict[str, Any]] = field(default_factory=deque)
    since_report: int = 0
    fixed_reference: bool = False

    def __post_init__(self) -> None:
        self.current = deque(maxlen=self.window)

    def add(self, row: dict[str, Any]) -> None:
        if not self.fixed_reference and len(self.reference) < self.reference_size:
            self.reference.append(row)
            return
        self.current.append(row)
        self.since_report += 1


def drift_report(name: str, windows: FilterWindows) -> dict[str, Any]:
    """Evidently's per-column drift tests, reference vs current window of one filter."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    ref, cur = pd.DataFrame(windows.reference), pd.DataFrame(list(windows.current))
    numeric = [c for c in ref.columns if (c == "weighted_average" or c.startswith("dim."))
               and c in cur.columns and ref[c].notna().sum() >= MIN_VALUES and cur[c].notna().sum() >= MIN_VALUES]
    categorical = [c for c in ("tier", "stage") if c in ref.columns and c in cur.columns]
    columns = numeric + categorical
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    snapshot = Report([ValueDrift(column=c) for c in columns]).run(
        current_data=Dataset.from_pandas(cur[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(ref[columns], data_definition=definition))
    results: dict[str, dict[str, Any]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        value = float(metric["value"])
        method, threshold = str(config["method"]), float(config["threshold"])
        # p-value tests drift below the threshold; distance measures (large windows) above it.
        drifted = value < threshold if "p_value" in method else value >= threshold
        results[str(config["column"])] = {"method": method, "threshold": threshold,
                                          "value": None if math.isnan(value) else round(value, 6),
                                          "drifted": bool(drifted)}
    drifted_share = sum(r["drifted"] for r in results.values()) / len(results) if results else 0.0
    share = {col: {k: round(v / len(cur), 4) for k, v in Counter(cur[col]).items()} for col in ("stage", "tier")}
    return {"filter": name, "version": windows.version, "package_hash": windows.package_hash,
            "reference_rows": len(ref), "current_rows": len(cur), "columns": results,
            "drifted_share": round(drifted_share, 4), "drift_detected": drifted_share >= 0.5,
            "current_share": share, "evaluated_at": datetime.now(UTC).isoformat()}


class DriftMetrics:
    def __init__(self, metrics: StreamMetrics) -> None:
        r = metrics.registry
        self.share = Gauge("fluxscore_drift_share", "Share of drifted columns in the last report", ["filter"],
                           registry=r)
        self.detected = Gauge("fluxscore_drift_detected", "1 when half or more of the columns drifted", ["filter"],
                              registry=r)
        self.value = Gauge("fluxscore_drift_value", "Drift statistic per column (p-value or distance)",
                           ["filter", "column", "method"], registry=r)
        self.window_share = Gauge("fluxscore_drift_window_share", "Share of the current window per category",
                                  ["filter", "column", "category"], registry=r)
        self.reports = PromCounter("fluxscore_drift_reports", "Drift reports computed", ["filter"], registry=r)

    def update(self, report: dict[str, Any]) -> None:
        name = report["filter"]
        self.reports.labels(name).inc()
        self.share.labels(name).set(report["drifted_share"])
        self.detected.labels(name).set(1.0 if report["drift_detected"] else 0.0)
        for column, result in report["columns"].items():
            if result["value"] is not None:
                self.value.labels(name, column, result["method"]).set(result["value"])
        for column, shares in report["current_share"].items():
            for category, value in shares.items():
                self.window_share.labels(name, column, category).set(value)


class DriftMonitor:
    def __init__(self, topics: Topics, send: Sender, metrics: StreamMetrics, *, reference_size: int, window: int,
                 every: int, retry_max_backoff: float = 5.0, reference: Sequence[ScoreRecord] = ()) -> None:
        self.topics, self.send, self.metrics = topics, send, metrics
        self.reference_size, self.window, self.every = reference_size, window, every
        self.retry_max_backoff = retry_max_backoff
        self.filters: dict[str, FilterWindows] = {}
        self.gauges = DriftMetrics(metrics)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._fixed: dict[str, list[dict[str, Any]]] = {}
        for record in reference:
            self._fixed.setdefault(record.filter.name, []).append(_row(record))

    def add(self, record: ScoreRecord) -> bool:
        """Take one record; False for a repeat (a redelivered record re-emitted as stored)."""
        if record.key in self._seen:
            return False
        self._seen[record.key] = None
        if len(self._seen) > _SEEN_KEYS:
            self._seen.popitem(last=False)
        name = record.filter.name
        windows = self.filters.get(name)
        if windows is None or windows.package_hash != record.filter.package_hash:
            if windows is not None:
                log.info("new package version: drift reference restarts",
                         extra={"filter": name, "version": record.filter.version})
            fixed = self._fixed.get(name)
            windows = FilterWindows(record.filter.package_hash, record.filter.version, self.reference_size,
                                    self.window, reference=list(fixed or []), fixed_reference=bool(fixed))
            self.filters[name] = windows
        windows.add(_row(record))
        return True

    def due(self) -> list[str]:
        return [name for name, w in self.filters.items()
                if len(w.reference) >= MIN_VALUES and len(w.current) >= MIN_VALUES and w.since_report >= self.every]

    async def handle(self, batch: Sequence[Inbound]) -> None:
        for item in batch:
            try:
                self.add(ScoreRecord.from_json(item.payload))
            except Exception as exc:
                # Whatever is wrong with one message, it costs that message: the monitor only reads.
                log.warning("not a score record; skipped", extra={
                    "topic": item.source.topic, "partition": item.source.partition, "offset": item.source.offset,
                    "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        self.metrics.messages_in.labels("monitor").inc(len(batch))
        reports = []
        for name in self.due():
            windows = self.filters[name]
            windows.since_report = 0
            try:
                reports.append(await asyncio.to_thread(drift_report, name, windows))
            except Exception:
                # One filter's failing report must not stop the others' (nor the consumer).
                log.exception("drift report failed", extra={"filter": name})
        if not reports:
            return
        outbox = Outbox(self.send, max_backoff=self.retry_max_backoff)
        for report in reports:
            outbox.add(Message(self.topics.drift.name, report["filter"].encode(), orjson.dumps(report)))
        await outbox.flush()
        for report in reports:
            self.gauges.update(report)
            log.info("drift report", extra={k: report[k] for k in ("filter", "version", "drifted_share",
                                                                     "drift_detected", "current_rows")})


def load_reference(path: Path | None) -> list[ScoreRecord]:
    if path is None:
        return []
    return [ScoreRecord.from_json(line) for line in path.read_bytes().splitlines() if line.strip()]


def run_monitor_worker(settings: StreamSettings, topics: Topics, metrics: StreamMetrics, name: str) -> int:
    """Runs the monitor role; ``metrics`` are already served (by :func:`streams.worker.run_worker`)."""
    bootstrap, _ = settings.require_cluster()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    metrics.set_phase(WAITING_FOR_KAFKA)
    loop.run_until_complete(ensure_topics(bootstrap, [topics.all_scores, topics.drift],
                                          replication=settings.replication))
    # Its own consumer group: the monitor sees every record, whatever else reads scores.all.
    app = build_app(settings.with_app_id(f"{settings.app_id}-monitor"))
    monitor = DriftMonitor(topics, faust_sender(app), metrics, reference_size=settings.monitor_reference_size,
                           window=settings.monitor_window, every=settings.monitor_every,
                           retry_max_backoff=settings.retry_max_backoff,
                           reference=load_reference(settings.monitor_reference_file))
    agent = batch_agent(monitor.handle, "monitor", 500, 1.0)
    app.agent(faust_topic(app, topics.all_scores, settings.replication), name="fluxscore.monitor",
              concurrency=1)(agent)
    register_assignment_log(app)
    ready_when_started(app, metrics)
    log.info("worker starting", extra={"roles": ["monitor"], "consumes": [topics.all_scores.name],
                                       "bootstrap": bootstrap, "worker": name})
    return run_faust(app, loop, settings)
