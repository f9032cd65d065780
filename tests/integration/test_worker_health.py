"""A worker process serves /healthz, /readyz and its metrics from the start, while it loads and waits."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import free_port
from tests.integration.conftest import StreamEnv, WorkerProcess

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None


def _wait_live(proc: WorkerProcess, base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = _get(base + "/healthz")
        if response is not None:
            assert (response.status_code, response.text) == (200, "ok\n")
            return
        assert proc.proc is not None and proc.proc.poll() is None, f"worker exited:\n{proc.tail()}"
        time.sleep(0.1)
    raise AssertionError(f"/healthz not served within {timeout} s:\n{proc.tail()}")


def test_a_worker_waiting_for_redis_is_live_but_not_ready(workers: Callable[..., WorkerProcess]) -> None:
    # Nothing listens on these ports. Redis is waited for before Kafka is contacted, so no broker is needed.
    env = StreamEnv(bootstrap=f"127.0.0.1:{free_port()}", redis=f"redis://127.0.0.1:{free_port()}/0",
                    name="health-no-redis")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = workers(env.env(FLUXSCORE_METRICS_PORT=str(port), FLUXSCORE_RETRY_MAX_BACKOFF="0.5"), "all")
    _wait_live(proc, base)

    phases: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        response = _get(base + "/readyz")
        assert response is not None, f"the metrics port stopped answering:\n{proc.tail()}"
        assert response.status_code == 503, response.text
        if not phases or phases[-1] != response.text.strip():
            phases.append(response.text.strip())
        if phases[-1] == "waiting for redis":
            break
        time.sleep(0.1)
    # Served before the models load, not only once they have.
    assert phases[0] in ("starting", "loading models") and phases[-1] == "waiting for redis", phases

    deadline = time.monotonic() + 30
    while True:
        samples = _samples(httpx.get(base + "/metrics", timeout=5).text)
        retries = samples.get(("fluxscore_stream_retries_total", (("service", "redis"),)), 0)
        if retries >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert samples[("fluxscore_ready", ())] == 0
    assert retries >= 2  # still trying, with backoff
    assert httpx.get(base + "/readyz", timeout=5).status_code == 503
    assert httpx.get(base + "/healthz", timeout=5).status_code == 200
    assert proc.proc is not None and proc.proc.poll() is None


def test_a_running_worker_is_ready(stream_env: StreamEnv, workers: Callable[..., WorkerProcess]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The monitor role loads no models: the quickest way to a Faust app whose agents run.
    proc = workers(stream_env.env(FLUXSCORE_METRICS_PORT=str(port)), "monitor")
    _wait_live(proc, base)
    deadline = time.monotonic() + 120
    while (response := httpx.get(base + "/readyz", timeout=5)).status_code != 200:
        assert response.status_code == 503 and response.text.strip() in ("starting", "waiting for kafka"), \
            response.text
        assert time.monotonic() < deadline, f"not ready within 120 s:\n{proc.tail()}"
        time.sleep(0.2)
    assert response.text == "ready\n"
    assert _samples(httpx.get(base + "/metrics", timeout=5).text)[("fluxscore_ready", ())] == 1
    assert [line["phase"] for line in proc.log_lines() if line.get("msg") == "worker phase"] == [
        "waiting for kafka", "ready"]
