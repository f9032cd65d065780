"""Fixtures of the annotator tests: a real redis-server, a real SQLite label store, the app served by uvicorn.

The broker and redis-server fixtures come from ``tests/streams/conftest.py``. Each test gets its own
Redis key prefix and database file, so tests share one Redis without seeing each other's queues.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streams.annotate.queue import AnnotationQueue
from streams.annotate.settings import AnnotateSettings
from tests.integration.conftest import redis_url
from training.labels import LabelStore, Priority, QueueItem

DIMS = ("impact", "evidence", "novelty")
SECRET = "s" * 40
_counter = itertools.count()


def make_item(article_id: str, priority: float, *, filter: str = "demo", title: str | None = None,
              dims: tuple[str, ...] = DIMS, **extra: Any) -> QueueItem:
    return QueueItem(
        article_id=article_id, filter=filter, version="1.0.0", package_hash="abc123",
        title=title or f"Title {article_id}",
        text=f"Body of {article_id}.\n\nSecond paragraph.", url=f"https://example.org/{article_id}", language="en",
        weighted_average=5.5, tier="MEDIUM", stage="stage2", dimensions={d: 4.0 + i for i, d in enumerate(dims)},
        priority=Priority(score=priority, uncertainty=0.4, boundary=0.6, novelty=0.9),
        record_key=f"{article_id}|{filter}|abc123", queued_at=datetime(2026, 1, 1, tzinfo=UTC), **extra)


@pytest.fixture
def redis_url_(redis_server: Any) -> str:
    return redis_url(redis_server)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"t{os.getpid()}-{next(_counter)}-{request.node.name[:30]}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LabelStore]:
    labels = LabelStore(tmp_path / "labels.db")
    yield labels
    labels.close()


@pytest.fixture
def make_queue(redis_url_: str, store: LabelStore, prefix: str) -> Iterator[Callable[..., AnnotationQueue]]:
    """New AnnotationQueue instances on this test's Redis prefix and label store (several = several services)."""
    made: list[AnnotationQueue] = []

    def make(**options: Any) -> AnnotationQueue:
        options = {"filters": ("demo", "demo_tech"), "prefix": prefix, "overlap": 1, "lease_seconds": 60.0,
                   **options}
        queue = AnnotationQueue.connect(redis_url_, store, **options)
        made.append(queue)
        return queue

    yield make
    if made:
        for key in made[0].redis.scan_iter(match=f"{prefix}:*"):
            made[0].redis.delete(key)
    for queue in made:
        queue.close()


def settings_for(redis: str, db: Path, prefix: str, **extra: Any) -> AnnotateSettings:
    return AnnotateSettings(redis_url=redis, labels_db=str(db), redis_prefix=prefix, session_secret=SECRET,
                            filters=("demo", "demo_tech"), **extra)


@dataclass
class LiveServer:
    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def serve(app: Any) -> LiveServer:
    """``app`` under uvicorn in a thread on a free loopback port, as `fluxscore annotate serve` runs it."""
    import uvicorn

    from streams.metrics import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="annotate-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn did not start")
        time.sleep(0.05)
    return LiveServer(f"http://127.0.0.1:{port}", server, thread)
