"""Prometheus metrics of a stream worker, and its liveness and readiness, on one loopback port
unless configured otherwise.

The port is served from the first moment of the process, before models load and before Redis and
Kafka answer, so that a container health check sees a live worker while it correctly waits:

- ``/metrics`` (and any other path, as ``prometheus_client`` does): the metrics, ``fluxscore_ready``
  among them (0 while loading or waiting, 1 once the agents run);
- ``/healthz``: 200 as soon as the process serves (liveness);
- ``/readyz``: 200 once the agents run, else 503 with the phase as the body (``loading models``,
  ``waiting for redis``, ``waiting for kafka``).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger("fluxscore.streams.metrics")

STARTING = "starting"
LOADING_MODELS = "loading models"
WAITING_FOR_REDIS = "waiting for redis"
WAITING_FOR_KAFKA = "waiting for kafka"
READY = "ready"

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
        self.ready = Gauge("fluxscore_ready", "1 once the worker's agents run; 0 while it loads models or waits "
                           "for Redis or Kafka", registry=r)
        self.phase = STARTING
        self._server: WSGIServer | None = None
        self._probed_totals: dict[str, float] = {}
        self._escalated_totals: dict[str, float] = {}

    def set_phase(self, phase: str) -> None:
        """What the worker is doing now; ``READY`` once its agents run (``/readyz`` answers 200)."""
        self.phase = phase
        self.ready.set(1 if phase == READY else 0)
        log.info("worker phase", extra={"phase": phase})

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
        """Serve metrics, ``/healthz`` and ``/readyz`` from a daemon thread; ``port=0`` picks a free
        one. Returns the bound port."""
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("_Server", (_ThreadingWSGIServer,), {"address_family": family})
        server: WSGIServer = make_server(host, port, self.wsgi_app(), server_class, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="fluxscore-metrics", daemon=True).start()
        self._server = server
        port = int(server.server_port)
        url_host = f"[{host}]" if ":" in host else host
        log.info("metrics served", extra={"url": f"http://{url_host}:{port}/metrics",
                                          "health": f"http://{url_host}:{port}/healthz",
                                          "ready": f"http://{url_host}:{port}/readyz"})
        return port

    def close(self) -> None:
        """Stop serving (tests; a worker serves until its process ends)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wsgi_app(self) -> Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]:
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                return _plain(start_response, "200 OK", "ok")
            if path == "/readyz":
                phase = self.phase  # read once: the agents' thread may change it meanwhile
                if phase == READY:
                    return _plain(start_response, "200 OK", READY)
                return _plain(start_response, "503 Service Unavailable", phase)
            # Every other path stays metrics, as with prometheus_client's own server.
            result: list[bytes] = metrics_app(environ, start_response)
            return result

        return app


def _plain(start_response: Callable[..., Any], status: str, text: str) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    # A slow scrape never blocks a health check; request threads never keep the process alive.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape on stderr would break the JSON log stream


def ready_when_started(app: Any, metrics: StreamMetrics) -> None:
    """Mark ``metrics`` ready once the Faust ``app`` is running: Faust starts app tasks after its
    agents and consumer have started (``app.on_startup_finished`` is taken by faust.Worker)."""
    async def mark_ready() -> None:
        metrics.set_phase(READY)

    app.task(mark_ready)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
