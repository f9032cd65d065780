"""Running one worker process: serve metrics and health, load models once, wait for Redis, create topics,
wire the agents, run Faust."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import faust

from scoring.pipeline import Pipeline
from scoring.settings import ScoringSettings
from streams import logs
from streams.agents import StageRunner
from streams.app import (
    build_app,
    faust_sender,
    register_agents,
    register_assignment_log,
    register_lag_timer,
    register_reload_timer,
    run_faust,
)
from streams.dedupe import DedupeStore
from streams.kafka import ensure_topics
from streams.metrics import LOADING_MODELS, WAITING_FOR_KAFKA, WAITING_FOR_REDIS, StreamMetrics, ready_when_started
from streams.reload import Reloader
from streams.settings import StreamSettings
from streams.topics import Topics

log = logging.getLogger("fluxscore.streams.worker")


def worker_name(settings: StreamSettings) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{'+'.join(settings.roles)}"




def run_worker(settings: StreamSettings, scoring: ScoringSettings | None = None) -> int:
    """Blocks until the worker is stopped (SIGTERM/SIGINT). Returns the exit code."""
    name = worker_name(settings)
    logs.configure(settings.log_format, settings.log_level, worker=name)
    bootstrap, redis_url = settings.require_cluster()
    scoring = scoring or ScoringSettings.from_env()
    settings.check_limits(scoring.max_record_bytes)
    topics = Topics.from_settings(settings)
    metrics = StreamMetrics()
    # First thing, before the slow or blocking steps (models, Redis, Kafka): a container's liveness
    # check must pass while the worker correctly waits, and /readyz says what it waits for.
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_host, settings.metrics_port)
    if "shadow" in settings.roles:
        from streams.shadow import run_shadow_worker

        return run_shadow_worker(settings, scoring, topics, metrics, name)
    if "monitor" in settings.roles:
        from streams.monitor import run_monitor_worker

        return run_monitor_worker(settings, topics, metrics, name, scoring)
    if "selector" in settings.roles:
        from streams.selector import run_selector_worker

        return run_selector_worker(settings, scoring, topics, metrics, name)
    if "oracle" in settings.roles:
        from streams.oracle_worker import run_oracle_worker

        return run_oracle_worker(settings, scoring, topics, metrics, name)
    if "feedback" in settings.roles:
        from streams.feedback import run_feedback_worker

        return run_feedback_worker(settings, scoring, topics, metrics, name)

    logs.quiet_progress_bars()
    metrics.set_phase(LOADING_MODELS)
    started = time.perf_counter()
    # Models load once, before joining the group: a worker never holds partitions it cannot serve yet.
    pipeline = Pipeline.load(list(settings.filters), settings=scoring,
                             students="model" in settings.roles)
    for filter_name in pipeline.filters:
        topics.scores(filter_name)  # validates the name against the reserved 'all'
    if settings.embedding_cache_ttl and "probe" in settings.roles:
        from scoring.embcache import RedisEmbeddingStore

        pipeline.embedding_store = RedisEmbeddingStore.from_url(
            redis_url, prefix=settings.redis_prefix, ttl=settings.embedding_cache_ttl,
            on_event=lambda event, n: metrics.embedding_cache.labels(event).inc(n))
    metrics.set_filters("+".join(settings.roles), pipeline.describe())
    log.info("filters loaded", extra={"filters": pipeline.describe(),
                                      "seconds": round(time.perf_counter() - started, 2)})

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Redis first: it is waited for without limit, while Kafka's wait below ends in an error, and
    # "waiting for kafka" then lasts from creating the topics until the agents run.
    metrics.set_phase(WAITING_FOR_REDIS)
    dedupe = DedupeStore.from_url(redis_url, prefix=settings.redis_prefix, ttl=settings.dedupe_ttl,
                                  max_backoff=settings.retry_max_backoff,
                                  on_retry=lambda exc, n: metrics.retries.labels("redis").inc())
    loop.run_until_complete(dedupe.wait_ready())
    metrics.set_phase(WAITING_FOR_KAFKA)
    loop.run_until_complete(ensure_topics(bootstrap, topics.pipeline_topics(list(pipeline.filters)),
                                          replication=settings.replication))

    app: faust.App = build_app(settings)
    runner = StageRunner(pipeline=pipeline, topics=topics, dedupe=dedupe, send=faust_sender(app), metrics=metrics,
                         limits=scoring.limits, max_message_bytes=settings.max_forward_bytes,
                         retry_max_backoff=settings.retry_max_backoff,
                         max_payload_bytes=settings.dead_letter_payload_bytes, worker=name)
    consumed = register_agents(app, runner, settings)
    register_lag_timer(app, runner)
    register_assignment_log(app)
    ready_when_started(app, metrics)
    if settings.reload_interval > 0:
        reloader = Reloader(pipeline, settings.filters, metrics, role="+".join(settings.roles))
        register_reload_timer(app, lambda: reloader.poll(runner.in_thread), settings.reload_interval)
    log.info("worker starting", extra={"roles": list(settings.roles), "consumes": consumed, "app_id": settings.app_id,
                                       "bootstrap": bootstrap})
    try:
        code = run_faust(app, loop, settings)
    finally:
        runner.executor.shutdown(wait=False, cancel_futures=True)
    log.info("worker stopped", extra={"exit_code": code})
    return code
