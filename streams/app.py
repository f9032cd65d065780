"""The Faust app: one app, every agent or only some of them (``roles``), in one worker process.

Workers with different roles share one consumer group (the app id): Faust's assignor gives each
topic's partitions to the members that subscribe to it, so CPU (prefilter) and GPU (probe, model)
workers scale separately and partitions spread the load across workers of one role.

Micro-batches come from ``stream.noack_take(max, within)`` — ``take`` without its automatic acks: a
batch's offsets are acknowledged by :func:`batch_agent` only after every output of the batch was
acknowledged by Kafka. If a batch cannot complete for a reason other than a bad record (which goes to
the DLQ) or an unavailable service (which is waited for), the worker stops without acknowledging it,
and the batch is redelivered after the restart.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import faust

from streams.agents import MODEL, PREFILTER, PROBE, Inbound, StageRunner
from streams.dlq import Source
from streams.kafka import faust_broker
from streams.outbox import Sender
from streams.settings import StreamSettings
from streams.topics import TopicSpec

log = logging.getLogger("fluxscore.streams.app")
EXIT_UNPROCESSABLE = 70  # EX_SOFTWARE


def build_app(settings: StreamSettings, *, datadir: Path | None = None) -> faust.App:
    bootstrap, _ = settings.require_cluster()
    if datadir is None:
        # Faust wants a data directory even without tables; a private one per process, removed at exit.
        datadir = Path(tempfile.mkdtemp(prefix="fluxscore-faust-"))
        atexit.register(shutil.rmtree, datadir, ignore_errors=True)
    return faust.App(
        settings.app_id,
        broker=faust_broker(bootstrap),
        # Our own Prometheus exporter replaces Faust's web server, which would bind 0.0.0.0.
        web_enabled=False,
        datadir=str(datadir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions["raw"],
        topic_replication_factor=settings.replication,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=settings.stream_buffer,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_rebalance_timeout=settings.rebalance_timeout,
        broker_commit_interval=settings.commit_interval,
        producer_max_batch_size=settings.producer_max_batch_bytes,
        producer_max_request_size=settings.max_message_bytes,
        producer_acks=-1,
        worker_redirect_stdouts=False,
    )


def faust_topic(app: faust.App, spec: TopicSpec, replication: int) -> Any:
    return app.topic(spec.name, partitions=spec.partitions, replicas=replication, key_type=bytes,
                     value_type=bytes, key_serializer="raw", value_serializer="raw")


def faust_sender(app: faust.App) -> Sender:
    async def send(topic: str, key: bytes | None, value: bytes,
                   headers: list[tuple[str, bytes]] | None) -> Awaitable[Any]:
        return await app.producer.send(topic, key, value, None, None, headers)
    return send


def batch_agent(handler: Callable[[Sequence[Inbound]], Awaitable[None]], stage: str, size: int,
                 within: float) -> Callable[[Any], Awaitable[None]]:
    async def agent(stream: Any) -> None:
        async for events in stream.noack_take(size, within=within):
            batch = [Inbound(payload=ev.value if isinstance(ev.value, bytes) else b"",
                             source=Source(ev.message.topic, ev.message.partition, ev.message.offset, ev.key))
                     for ev in events]
            try:
                await handler(batch)
            except Exception:
                # Neither a bad record (DLQ) nor an unavailable service (waited for): acknowledging
                # would lose the batch, retrying would loop. Stop; the restart redelivers it.
                log.critical("batch could not be processed; stopping the worker without committing it",
                             extra={"stage": stage, "size": len(batch)}, exc_info=True)
                logging.shutdown()
                os._exit(EXIT_UNPROCESSABLE)
            for ev in events:
                await stream.ack(ev)
    agent.__name__ = f"{stage}_agent"
    return agent


def register_agents(app: faust.App, runner: StageRunner, settings: StreamSettings) -> list[str]:
    """One batched agent per pipeline role of this worker. Returns the names of the topics consumed."""
    topics = runner.topics
    plan = {
        PREFILTER: (topics.raw, runner.prefilter, settings.prefilter_batch, settings.prefilter_within),
        PROBE: (topics.screened, runner.probe, settings.probe_batch, settings.probe_within),
        MODEL: (topics.escalated, runner.model, settings.model_batch, settings.model_within),
    }
    consumed: list[str] = []
    for role in settings.roles:
        if role not in plan:
            continue
        spec, handler, size, within = plan[role]
        app.agent(faust_topic(app, spec, settings.replication), name=f"fluxscore.{role}",
                  concurrency=1)(batch_agent(handler, role, size, within))
        consumed.append(spec.name)
    return consumed


def register_lag_timer(app: faust.App, runner: StageRunner, interval: float = 5.0) -> None:
    @app.timer(interval)
    async def report_lag() -> None:
        lags: list[tuple[str, int, int]] = []
        for tp in app.consumer.assignment():
            highwater = app.consumer.highwater(tp)
            done = runner.next_offsets.get((tp.topic, tp.partition))
            if done is None:
                done = await app.consumer.position(tp)
            if highwater is not None and done is not None:
                lags.append((tp.topic, tp.partition, int(highwater) - int(done)))
        runner.metrics.set_lag(lags)


def register_reload_timer(app: faust.App, poll: Callable[[], Awaitable[list[str]]], interval: float) -> None:
    @app.timer(interval)
    async def hot_reload() -> None:
        try:
            await poll()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("hot-reload poll failed")


def register_assignment_log(app: faust.App) -> None:
    """Log every new assignment: which partitions this worker now serves (operators and benchmarks read it)."""
    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", set())
        log.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)})
    app.on_partitions_assigned.connect(on_assigned)


def run_faust(app: faust.App, loop: asyncio.AbstractEventLoop, settings: StreamSettings) -> int:
    """Run the app until SIGTERM/SIGINT; returns the exit code."""
    worker = faust.Worker(app, loop=loop, loglevel=settings.log_level, quiet=True, redirect_stdouts=False,
                          override_logging=False)
    # The terminal spinner writes escape codes into what is a JSON log stream here.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    return 0
