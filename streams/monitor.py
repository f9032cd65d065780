"""Drift monitoring of the scores (``fluxscore worker --role monitor``), with Evidently 0.7.

The monitor reads ``scores.all`` in a consumer group of its own. Per filter (and package version: a
hot-reloaded version starts afresh, scores of different versions are not the same quantity) it keeps a
reference and a sliding current window of records (:mod:`streams.drift.windows`), and for every window
— after ``FLUXSCORE_MONITOR_EVERY`` new records, or ``FLUXSCORE_MONITOR_INTERVAL`` seconds — it
compares the two (:mod:`streams.drift.report`): calibrated dimensions, weighted average, tier shares,
stage mix (escalation rate), prefilter and commerce block rates, text length, language mix, and the
stage-1 embeddings. Each window gives a JSON summary on ``monitor.drift`` (keyed by filter), Prometheus
gauges, and, with ``FLUXSCORE_MONITOR_REPORTS_DIR`` / ``FLUXSCORE_MONITOR_WORKSPACE``, an Evidently report
(self-contained HTML and a snapshot ``Snapshot.load`` reads back). Alert rules
(:mod:`streams.drift.alerts`, thresholds from the package's ``drift.alerts``) put a record on
``monitor.alerts``, a warning log line and ``fluxscore_drift_alert{filter,rule}`` = 1.

The reference is the package's profile (``drift.reference``, written by ``fluxscore train export`` from
the calibration data and hashed with the package), a file of records
(``FLUXSCORE_MONITOR_REFERENCE_FILE``), or the pinned first ``FLUXSCORE_MONITOR_REFERENCE_SIZE`` records of
the version in production; every report says which.

**Embeddings: the monitor re-embeds a sample.** Score records carry no embedding, and the monitor does not
ask the probe worker to publish one: the records are the product's contract and stay byte-identical across
rescoring (an embedding's last bits depend on the batch it was computed in), and the probe's hot path does
no extra encoding or publishing for monitoring. Instead the monitor also reads ``articles.screened``, keeps
the last ``FLUXSCORE_MONITOR_EMBEDDING_SAMPLE`` texts each filter's probe read, and at report time embeds
them with that filter's own encoder and cut (its package's ``EmbeddingKey``), so they compare with the
reference profile's embeddings, made the same way at export. The cost is bounded by the sample (64
articles per window by default, not every article), and with ``FLUXSCORE_EMBEDDING_CACHE_TTL`` set the
encoding usually becomes a Redis read of the probe's own embedding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from scoring.records import ScoreRecord
from scoring.settings import ScoringSettings
from streams.agents import Inbound
from streams.app import batch_agent, build_app, faust_sender, faust_topic, register_assignment_log, run_faust
from streams.drift.alerts import RULES
from streams.drift.report import MIN_VALUES, DriftResult, Reference, WindowInputs, evaluate_window
from streams.drift.store import ReportStore
from streams.drift.windows import (
    DriftTracker,
    Embedder,
    FilterWindows,
    PackageLookup,
    package_lookup,
    stage1_embedder,
)
from streams.kafka import ensure_topics
from streams.metrics import WAITING_FOR_KAFKA, StreamMetrics, ready_when_started
from streams.outbox import Message, Outbox, Sender
from streams.settings import StreamSettings
from streams.topics import Topics

__all__ = ["MIN_VALUES", "DriftMetrics", "DriftMonitor", "drift_report", "load_reference", "run_monitor_worker"]

log = logging.getLogger("fluxscore.streams.monitor")
STATUS_LEVEL = {"ok": 0.0, "alert": 1.0, "critical": 2.0}


def drift_report(name: str, windows: FilterWindows) -> dict[str, Any]:
    """The JSON summary of one filter's windows as they are now (no snapshot, nothing saved)."""
    inputs = WindowInputs(filter=name, version=windows.version, package_hash=windows.package_hash,
                          seq=windows.seq, trigger="count",
                          reference=Reference(windows.reference_kind, windows.reference_detail,
                                              list(windows.reference), windows.reference_embeddings),
                          rows=list(windows.current), new_rows=windows.since_report, thresholds=windows.thresholds,
                          embedding_note=windows.embedding_note)
    return evaluate_window(inputs, with_snapshot=False).summary


class DriftMetrics:
    """The drift gauges. Label values that a window no longer has are removed, not left at their last
    value: a category (a stage, a language) absent from this window must not count in its shares."""

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
        self.embedding = Gauge("fluxscore_drift_embedding_score", "Evidently embedding drift of the last report "
                               "(ROC AUC; 0.5 is no drift)", ["filter"], registry=r)
        self.status = Gauge("fluxscore_drift_status", "Last report: 0 ok, 1 alert, 2 critical", ["filter"],
                            registry=r)
        self.alert = Gauge("fluxscore_drift_alert", "1 while the rule fires for the filter's last window",
                           ["filter", "rule"], registry=r)
        self.alerts = PromCounter("fluxscore_drift_alerts", "Drift alerts raised", ["filter", "rule"], registry=r)
        self.reports = PromCounter("fluxscore_drift_reports", "Drift reports computed", ["filter"], registry=r)
        self._labels: dict[tuple[str, str], set[tuple[str, ...]]] = {}

    def _set(self, gauge: Gauge, kind: str, name: str, values: dict[tuple[str, ...], float]) -> None:
        for labels, value in values.items():
            gauge.labels(name, *labels).set(value)
        for stale in self._labels.get((kind, name), set()) - set(values):
            try:
                gauge.remove(name, *stale)
            except KeyError:
                pass
        self._labels[(kind, name)] = set(values)

    def update(self, report: dict[str, Any]) -> None:
        name = report["filter"]
        self.reports.labels(name).inc()
        self.share.labels(name).set(report["drifted_share"])
        self.detected.labels(name).set(1.0 if report["drift_detected"] else 0.0)
        self.status.labels(name).set(STATUS_LEVEL.get(report.get("status", "ok"), 0.0))
        self._set(self.value, "value", name, {(column, result["method"]): result["value"]
                                              for column, result in report["columns"].items()
                                              if result["value"] is not None})
        self._set(self.window_share, "share", name, {(column, str(category)): value
                                                     for column, shares in report["current_share"].items()
                                                     for category, value in shares.items()})
        embedding = report.get("embeddings") or {}
        self._set(self.embedding, "embedding", name, {(): embedding["score"]} if embedding.get("available") else {})
        fired = {a["rule"] for a in report.get("alerts", [])}
        for rule in RULES:
            self.alert.labels(name, rule).set(1.0 if rule in fired else 0.0)
        for rule in fired:
            self.alerts.labels(name, rule).inc()


class DriftMonitor:
    """Windows, reports, alerts and their publication; fed by the monitor's agents (or a test)."""

    def __init__(self, topics: Topics, send: Sender, metrics: StreamMetrics, *, reference_size: int, window: int,
                 every: int, retry_max_backoff: float = 5.0, reference: Sequence[ScoreRecord] = (),
                 reference_name: str = "reference file", interval: float = 0.0, max_age: float = 0.0,
                 sample_size: int = 0, use_package_reference: bool = True, alerts_topic: str = "monitor.alerts",
                 store: ReportStore | None = None, lookup: PackageLookup | None = None,
                 embedder: Embedder | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.topics, self.send, self.metrics = topics, send, metrics
        self.retry_max_backoff = retry_max_backoff
        self.alerts_topic = alerts_topic
        self.store = store or ReportStore()
        self.tracker = DriftTracker(reference_size=reference_size, window=window, every=every, interval=interval,
                                    max_age=max_age, sample_size=sample_size, reference_records=reference,
                                    reference_name=reference_name, use_package_reference=use_package_reference,
                                    lookup=lookup, embedder=embedder, clock=clock)
        self.gauges = DriftMetrics(metrics)
        # One report at a time: the timer and the agents may both find a window due.
        self._lock = asyncio.Lock()

    @property
    def filters(self) -> dict[str, FilterWindows]:
        return self.tracker.filters

    def add(self, record: ScoreRecord) -> bool:
        """Take one record; False for a repeat (a redelivered record re-emitted as stored)."""
        return self.tracker.add(record)

    def due(self) -> list[str]:
        return [name for name, _ in self.tracker.due()]

    async def handle(self, batch: Sequence[Inbound]) -> None:
        """A batch from ``scores.all``."""
        for item in batch:
            try:
                self.add(ScoreRecord.from_json(item.payload))
            except Exception as exc:
                # Whatever is wrong with one message, it costs that message: the monitor only reads.
                log.warning("not a score record; skipped", extra={
                    "topic": item.source.topic, "partition": item.source.partition, "offset": item.source.offset,
                    "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        self.metrics.messages_in.labels("monitor").inc(len(batch))
        await self.report_due()

    async def handle_screened(self, batch: Sequence[Inbound]) -> None:
        """A batch from ``articles.screened``: the texts each filter's probe reads, for the embedding sample."""
        from streams.wire import decode_screened

        for item in batch:
            try:
                screened = decode_screened(item.payload)
            except Exception:
                continue  # the probe dead-letters it; for the sample it is just one article fewer
            self.tracker.add_text(screened.open_filters, screened.text)
        self.metrics.messages_in.labels("monitor-screened").inc(len(batch))

    async def report_due(self) -> list[DriftResult]:
        """Compute, save and publish every report that is due (the timer calls this too)."""
        async with self._lock:
            results: list[DriftResult] = []
            for name, trigger in self.tracker.due():
                pending = self.tracker.take(name, trigger)
                try:
                    result = await asyncio.to_thread(self.tracker.run, pending)
                except Exception:
                    # One filter's failing report must not stop the others' (nor the consumer).
                    log.exception("drift report failed", extra={"filter": name})
                    continue
                if self.store:
                    try:
                        result.summary["report"] = await asyncio.to_thread(self.store.save, result)
                    except Exception as exc:
                        log.error("drift report could not be saved", extra={
                            "filter": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                results.append(result)
            if results:
                await self._publish(results)
            return results

    async def _publish(self, results: list[DriftResult]) -> None:
        outbox = Outbox(self.send, max_backoff=self.retry_max_backoff)
        for result in results:
            summary = result.summary
            key = summary["filter"].encode()
            outbox.add(Message(self.topics.drift.name, key, orjson.dumps(summary)))
            for alert in result.alerts:
                outbox.add(Message(self.alerts_topic, key, orjson.dumps({
                    "filter": summary["filter"], "version": summary["version"],
                    "package_hash": summary["package_hash"], "window": summary["window"]["seq"],
                    **alert.as_dict(), "reference_kind": summary["reference"]["kind"],
                    "report": (summary.get("report") or {}).get("html"), "evaluated_at": summary["evaluated_at"]})))
        await outbox.flush()
        for result in results:
            summary = result.summary
            self.gauges.update(summary)
            log.info("drift report", extra={
                **{k: summary[k] for k in ("filter", "version", "drifted_share", "drift_detected", "current_rows",
                                           "status")},
                "window": summary["window"]["seq"], "reference": summary["reference"]["kind"],
                "alerts": [a.rule for a in result.alerts],
                "report": (summary.get("report") or {}).get("html")})
            for alert in result.alerts:
                log.warning("drift alert", extra={"filter": summary["filter"], "version": summary["version"],
                                                  "rule": alert.rule, "severity": alert.severity,
                                                  "alert": alert.message, "window": summary["window"]["seq"]})


def load_reference(path: Path | None) -> list[ScoreRecord]:
    if path is None:
        return []
    return [ScoreRecord.from_json(line) for line in path.read_bytes().splitlines() if line.strip()]


def run_monitor_worker(settings: StreamSettings, topics: Topics, metrics: StreamMetrics, name: str,
                       scoring: ScoringSettings | None = None) -> int:
    """Runs the monitor role; ``metrics`` are already served (by :func:`streams.worker.run_worker`)."""
    from scoring.package import search_roots

    bootstrap, redis_url = settings.require_cluster()
    scoring = scoring or ScoringSettings.from_env()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    metrics.set_phase(WAITING_FOR_KAFKA)
    alerts = topics.alerts
    sample = settings.monitor_embedding_sample
    wanted = [topics.all_scores, topics.drift, alerts, *([topics.screened] if sample else [])]
    loop.run_until_complete(ensure_topics(bootstrap, wanted, replication=settings.replication))
    cache = None
    if sample and settings.embedding_cache_ttl:
        from scoring.embcache import RedisEmbeddingStore

        # Usually the probe's own embedding: the sample then costs a Redis read, not an encoding.
        cache = RedisEmbeddingStore.from_url(redis_url, prefix=settings.redis_prefix, ttl=settings.embedding_cache_ttl,
                                             on_event=lambda event, n: metrics.embedding_cache.labels(event).inc(n))
    # Its own consumer group: the monitor sees every record, whatever else reads scores.all.
    app = build_app(settings.with_app_id(f"{settings.app_id}-monitor"))
    reference_file = settings.monitor_reference_file
    monitor = DriftMonitor(
        topics, faust_sender(app), metrics, reference_size=settings.monitor_reference_size,
        window=settings.monitor_window, every=settings.monitor_every, retry_max_backoff=settings.retry_max_backoff,
        reference=load_reference(reference_file), reference_name=reference_file.name if reference_file else "",
        interval=settings.monitor_interval, max_age=settings.monitor_max_age, sample_size=sample,
        use_package_reference=settings.monitor_reference == "auto", alerts_topic=alerts.name,
        store=ReportStore(settings.monitor_reports_dir, settings.monitor_workspace, settings.monitor_reports_keep),
        lookup=package_lookup(search_roots(scoring.filters_path)), embedder=stage1_embedder(scoring, cache))
    app.agent(faust_topic(app, topics.all_scores, settings.replication), name="fluxscore.monitor",
              concurrency=1)(batch_agent(monitor.handle, "monitor", 500, 1.0))
    consumes = [topics.all_scores.name]
    if sample:
        app.agent(faust_topic(app, topics.screened, settings.replication), name="fluxscore.monitor_sample",
                  concurrency=1)(batch_agent(monitor.handle_screened, "monitor-screened", 500, 1.0))
        consumes.append(topics.screened.name)
    if settings.monitor_interval > 0:
        @app.timer(min(max(settings.monitor_interval / 4, 1.0), 15.0))
        async def time_windows() -> None:
            try:
                await monitor.report_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("drift timer failed")

    register_assignment_log(app)
    ready_when_started(app, metrics)
    log.info("worker starting", extra={"roles": ["monitor"], "consumes": consumes, "bootstrap": bootstrap,
                                       "worker": name, "reports": str(settings.monitor_reports_dir or ""),
                                       "workspace": str(settings.monitor_workspace or "")})
    return run_faust(app, loop, settings)
