"""The metrics port over real HTTP: liveness from the start, readiness by phase, the metrics themselves."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import LOADING_MODELS, READY, WAITING_FOR_KAFKA, WAITING_FOR_REDIS, StreamMetrics


def _ready_value(text: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "fluxscore_ready")


@pytest.fixture
def served() -> Iterator[tuple[StreamMetrics, str]]:
    metrics = StreamMetrics()
    port = metrics.serve("127.0.0.1", 0)
    yield metrics, f"http://127.0.0.1:{port}"
    metrics.close()


def test_health_is_live_at_once_and_ready_only_when_the_agents_run(served: tuple[StreamMetrics, str]) -> None:
    metrics, url = served
    with httpx.Client(base_url=url, timeout=5) as client:
        health = client.get("/healthz")
        assert (health.status_code, health.text) == (200, "ok\n")
        assert client.get("/readyz").status_code == 503  # not even loading yet
        assert _ready_value(client.get("/metrics").text) == 0
        for phase in (LOADING_MODELS, WAITING_FOR_REDIS, WAITING_FOR_KAFKA):
            metrics.set_phase(phase)
            ready = client.get("/readyz")
            assert (ready.status_code, ready.text) == (503, phase + "\n")
            assert client.get("/healthz").status_code == 200
            assert _ready_value(client.get("/metrics").text) == 0
        metrics.set_phase(READY)
        ready = client.get("/readyz")
        assert (ready.status_code, ready.text) == (200, "ready\n")
        assert _ready_value(client.get("/metrics").text) == 1


def test_metrics_are_served_on_metrics_and_any_other_path(served: tuple[StreamMetrics, str]) -> None:
    metrics, url = served
    metrics.retries.labels("redis").inc(3)
    for path in ("/metrics", "/"):
        response = httpx.get(url + path, timeout=5)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        samples = {s.name: s.value for f in text_string_to_metric_families(response.text) for s in f.samples}
        assert samples["fluxscore_stream_retries_total"] == 3
        assert "fluxscore_ready" in samples


def test_port_zero_binds_a_free_loopback_port_and_close_releases_it() -> None:
    metrics = StreamMetrics()
    port = metrics.serve("127.0.0.1", 0)
    assert port > 0
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    metrics.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
