"""Prometheus metrics of a stream worker, served on a loopback port unless configured otherwise."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("fluxscore.streams.metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class StreamMetrics:
    """One registry per worker, so tests and several apps in a process never collide."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.messages_in = Counter("fluxscore_stream_messages_in", "Messages consumed, per stage",
                                   ["stage"], registry=r)
        self.records_out = Counter("fluxscore_stream_records_out", "Score records emitted, per filter and stage used",
                                   ["filter", "stage_used"], registry=r)
        self.forwarded = Counter("fluxscore_stream_forwarded", "Items sent on to the next stage's topic",
                                 ["stage", "topic"], registry=r)
        self.duplicates = Counter("fluxscore_stream_duplicates",
                                  "Records already scored before (redelivery): re-emitted or skipped",
                                  ["stage", "action"], registry=r)
        self.dlq = Counter("fluxscore_stream_dlq", "Messages sent to the dead-letter topic",
                           ["stage", "error_type"], registry=r)
        self.batch_size = Histogram("fluxscore_stream_batch_size", "Messages per micro-batch", ["stage"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("fluxscore_stream_batch_seconds", "Wall time of one micro-batch, per stage",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("fluxscore_stream_stage_seconds",
                                       "Time inside the scoring stage function per batch", ["stage"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.probed = Counter("fluxscore_stream_probed", "(article, filter) pairs scored by the probe",
                              ["filter"], registry=r)
        self.escalated = Counter("fluxscore_stream_escalated", "(article, filter) pairs escalated to stage 2",
                                 ["filter"], registry=r)
        self.escalation_rate = Gauge("fluxscore_stream_escalation_rate",
                                     "Escalated / probed pairs since the worker started", ["filter"], registry=r)
        self.consumer_lag = Gauge("fluxscore_stream_consumer_lag",
                                  "Highwater minus the next offset to process, per assigned partition",
                                  ["topic", "partition"], registry=r)
        self.retries = Counter("fluxscore_stream_retries", "Waits for an unavailable service", ["service"],
                               registry=r)
        self.embedding_cache = Counter("fluxscore_stream_embedding_cache",
                                       "Embedding cache lookups (hit, miss) and Redis errors", ["event"], registry=r)
        self.reloads = Counter("fluxscore_stream_reloads", "Filter packages (re)loaded while running",
                               ["filter", "outcome"], registry=r)
        self.filter_info = Gauge("fluxscore_stream_filter_info", "Live filter versions (value 1)",
                                 ["filter", "version", "package_hash", "role"], registry=r)
        self.shadow_pairs = Counter("fluxscore_stream_shadow_pairs", "Live/shadow record pairs compared",
                                    ["filter", "tier_agrees"], registry=r)
        self.shadow_abs_diff = Histogram("fluxscore_stream_shadow_abs_diff",
                                         "|live - shadow| weighted average", ["filter"],
                                         buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0), registry=r)
        self._probed_totals: dict[str, float] = {}
        self._escalated_totals: dict[str, float] = {}

    def count_probe(self, per_filter_probed: dict[str, int], per_filter_escalated: dict[str, int]) -> None:
        for name, n in per_filter_probed.items():
            esc = per_filter_escalated.get(name, 0)
            self.probed.labels(name).inc(n)
            self.escalated.labels(name).inc(esc)
            self._probed_totals[name] = self._probed_totals.get(name, 0) + n
            self._escalated_totals[name] = self._escalated_totals.get(name, 0) + esc
            if self._probed_totals[name]:
                self.escalation_rate.labels(name).set(self._escalated_totals[name] / self._probed_totals[name])

    def set_filters(self, role: str, described: dict[str, Any]) -> None:
        self.filter_info.clear()
        for name, info in described.items():
            self.filter_info.labels(name, str(info["version"]), str(info["package_hash"]), role).set(1)

    def set_lag(self, lags: Iterable[tuple[str, int, int]]) -> None:
        for topic, partition, lag in lags:
            self.consumer_lag.labels(topic, str(partition)).set(max(lag, 0))

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP exporter; ``port=0`` picks a free one. Returns the bound port."""
        if port == 0:
            port = free_port(host)
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics served", extra={"url": f"http://{host}:{port}/metrics"})
        return port


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
