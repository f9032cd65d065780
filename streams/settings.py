"""Settings of a stream worker, read once from environment variables (prefix ``FLUXSCORE_``).

Filter behaviour is data in each package and model/batch settings of the scoring core live in
:mod:`scoring.settings`; these are the properties of the streaming process around it.

| variable | default | meaning |
|---|---|---|
| ``FLUXSCORE_KAFKA_BOOTSTRAP`` (or ``KAFKA_BOOTSTRAP``) | (none) | Kafka bootstrap servers, ``host:port[,host:port]`` |
| ``FLUXSCORE_REDIS_URL`` (or ``REDIS_URL``) | (none) | Redis URL for idempotency, e.g. ``redis://127.0.0.1:6379/0`` |
| ``FLUXSCORE_APP_ID`` | ``fluxscore`` | Faust app id = Kafka consumer group of the workers |
| ``FLUXSCORE_ROLES`` | ``all`` | any of ``prefilter,probe,model``; ``all`` (those); ``shadow``; ``monitor`` |
| ``FLUXSCORE_FILTERS`` | ``demo,demo_tech`` | filter refs (``name``, ``name@version`` or a package directory) |
| ``FLUXSCORE_SHADOW_FILTERS`` | (none) | refs scored beside the live version by the ``shadow`` role |
| ``FLUXSCORE_TOPIC_PREFIX`` | (none) | prepended to every topic name, e.g. ``staging.`` |
| ``FLUXSCORE_TOPIC_RAW`` | ``articles.raw`` | input topic of articles |
| ``FLUXSCORE_TOPIC_SCREENED`` | ``articles.screened`` | articles past the prefilters |
| ``FLUXSCORE_TOPIC_ESCALATED`` | ``articles.escalated`` | (article, filter) pairs escalated to stage 2 |
| ``FLUXSCORE_TOPIC_DLQ`` | ``articles.dlq`` | records that could not be processed |
| ``FLUXSCORE_TOPIC_SCORES`` | ``scores`` | score topics are ``<this>.<filter>`` and ``<this>.all`` |
| ``FLUXSCORE_TOPIC_SHADOW`` | ``scores.shadow`` | live-vs-shadow comparisons |
| ``FLUXSCORE_TOPIC_DRIFT`` | ``monitor.drift`` | drift reports of the ``monitor`` role, keyed by filter |
| ``FLUXSCORE_PARTITIONS`` | ``4`` | partitions of every topic the workers create |
| ``FLUXSCORE_PARTITIONS_<RAW/SCREENED/ESCALATED/SCORES/DLQ>`` | ``FLUXSCORE_PARTITIONS`` | per-topic override |
| ``FLUXSCORE_REPLICATION`` | ``1`` | replication factor of created topics |
| ``FLUXSCORE_PREFILTER_BATCH`` / ``_WITHIN`` | ``64`` / ``0.2`` | micro-batch size / deadline (s), prefilter agent |
| ``FLUXSCORE_PROBE_BATCH`` / ``_WITHIN`` | ``64`` / ``0.5`` | micro-batch size / deadline (s), probe agent |
| ``FLUXSCORE_MODEL_BATCH`` / ``_WITHIN`` | ``64`` / ``1.0`` | escalations per micro-batch / deadline (s), model agent |
| ``FLUXSCORE_MAX_MESSAGE_BYTES`` | ``1048576`` | largest message produced; match the broker's ``message.max.bytes`` |
| ``FLUXSCORE_STREAM_BUFFER`` | ``256`` | events buffered per partition before the consumer pauses (backpressure) |
| ``FLUXSCORE_METRICS_HOST`` | ``127.0.0.1`` | Prometheus bind address (loopback unless set) |
| ``FLUXSCORE_METRICS_PORT`` | ``9108`` | Prometheus port; ``0`` picks a free port, ``off`` disables |
| ``FLUXSCORE_RELOAD_INTERVAL`` | ``30`` | seconds between checks for new package versions; ``0`` disables hot reload |
| ``FLUXSCORE_DEDUPE_TTL`` | ``604800`` | seconds a scored record is kept in Redis for idempotency |
| ``FLUXSCORE_REDIS_PREFIX`` | ``fluxscore`` | prefix of the Redis keys |
| ``FLUXSCORE_EMBEDDING_CACHE_TTL`` | ``0`` | seconds a stage-1 embedding is kept in Redis; ``0``: no embedding cache |
| ``FLUXSCORE_RETRY_MAX_BACKOFF`` | ``5`` | cap (s) of the backoff while Redis or Kafka is unavailable |
| ``FLUXSCORE_SESSION_TIMEOUT`` | ``10`` | Kafka consumer session timeout (s) |
| ``FLUXSCORE_HEARTBEAT_INTERVAL`` | ``1`` | Kafka consumer heartbeat interval (s) |
| ``FLUXSCORE_REBALANCE_TIMEOUT`` | ``20`` | Kafka consumer rebalance timeout (s) |
| ``FLUXSCORE_COMMIT_INTERVAL`` | ``1`` | seconds between offset commits (only processed batches are committed) |
| ``FLUXSCORE_PRODUCER_MAX_BATCH_BYTES`` | ``16384`` | producer batch bytes; ``1``: one record per batch (for Tansu) |
| ``FLUXSCORE_MONITOR_REFERENCE_SIZE`` | ``500`` | records per filter in the drift reference window |
| ``FLUXSCORE_MONITOR_WINDOW`` | ``500`` | records per filter in the current (sliding) window |
| ``FLUXSCORE_MONITOR_EVERY`` | ``250`` | new records per filter between drift reports |
| ``FLUXSCORE_MONITOR_REFERENCE_FILE`` | (none) | JSONL of score records to use as the reference instead |
| ``FLUXSCORE_LOG_FORMAT`` | ``json`` | ``json`` (one object per line) or ``text`` |
| ``FLUXSCORE_LOG_LEVEL`` | ``INFO`` | log level |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from streams.exceptions import StreamSettingsError

Role = Literal["prefilter", "probe", "model", "shadow", "monitor"]
PIPELINE_ROLES: tuple[Role, ...] = ("prefilter", "probe", "model")
# Each reads in a consumer group of its own (it must see every message), so it cannot share a Faust
# app, which has one group, with other roles.
SOLO_ROLES: tuple[Role, ...] = ("shadow", "monitor")
ROLES: tuple[Role, ...] = (*PIPELINE_ROLES, *SOLO_ROLES)
PARTITIONED_TOPICS = ("raw", "screened", "escalated", "scores", "dlq")
# What a hop adds to an accepted record: prefilter results per filter, commerce evidence, key, headers.
FORWARD_HEADROOM = 64 * 1024


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StreamSettingsError(f"{name} must be an integer, got {raw!r}", variable=name) from None
    if value < minimum:
        raise StreamSettingsError(f"{name} must be >= {minimum}, got {value}", variable=name)
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StreamSettingsError(f"{name} must be a number, got {raw!r}", variable=name) from None
    if value < minimum:
        raise StreamSettingsError(f"{name} must be >= {minimum}, got {value}", variable=name)
    return value


def parse_roles(raw: str | list[str] | tuple[str, ...]) -> tuple[Role, ...]:
    """``all`` or a comma-separated subset of the roles, in pipeline order."""
    items = [r.strip().lower() for r in (raw.split(",") if isinstance(raw, str) else raw) for r in r.split(",")]
    items = [r for r in items if r]
    if not items:
        raise StreamSettingsError("no role given; choose from all, " + ", ".join(ROLES), variable="FLUXSCORE_ROLES")
    unknown = sorted(set(items) - {"all", *ROLES})
    if unknown:
        raise StreamSettingsError(f"unknown role(s) {', '.join(unknown)}; choose from all, " + ", ".join(ROLES),
                                  variable="FLUXSCORE_ROLES")
    wanted = set(PIPELINE_ROLES) | set(items) - {"all"} if "all" in items else set(items)
    solo = wanted & set(SOLO_ROLES)
    if solo and len(wanted) > 1:
        raise StreamSettingsError(f"the {'/'.join(sorted(solo))} role runs alone in its worker",
                                  variable="FLUXSCORE_ROLES")
    return tuple(r for r in ROLES if r in wanted)


def _refs(raw: str | None) -> tuple[str, ...]:
    return tuple(r.strip() for r in (raw or "").split(",") if r.strip())


@dataclass(frozen=True, slots=True)
class StreamSettings:
    kafka_bootstrap: str | None = None
    redis_url: str | None = None
    app_id: str = "fluxscore"
    roles: tuple[Role, ...] = PIPELINE_ROLES
    filters: tuple[str, ...] = ("demo", "demo_tech")
    shadow_filters: tuple[str, ...] = ()
    topic_prefix: str = ""
    topic_raw: str = "articles.raw"
    topic_screened: str = "articles.screened"
    topic_escalated: str = "articles.escalated"
    topic_dlq: str = "articles.dlq"
    topic_scores: str = "scores"
    topic_shadow: str = "scores.shadow"
    topic_drift: str = "monitor.drift"
    partitions: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(PARTITIONED_TOPICS, 4))
    replication: int = 1
    prefilter_batch: int = 64
    prefilter_within: float = 0.2
    probe_batch: int = 64
    probe_within: float = 0.5
    model_batch: int = 64
    model_within: float = 1.0
    stream_buffer: int = 256
    max_message_bytes: int = 1_048_576
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9108
    reload_interval: float = 30.0
    dedupe_ttl: int = 7 * 24 * 3600
    redis_prefix: str = "fluxscore"
    embedding_cache_ttl: int = 0
    retry_max_backoff: float = 5.0
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    rebalance_timeout: float = 20.0
    commit_interval: float = 1.0
    producer_max_batch_bytes: int = 16384
    monitor_reference_size: int = 500
    monitor_window: int = 500
    monitor_every: int = 250
    monitor_reference_file: Path | None = None
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StreamSettings:
        env = dict(os.environ if env is None else env)
        p = "FLUXSCORE_"
        default_parts = _int(env, p + "PARTITIONS", 4)
        partitions = {t: _int(env, f"{p}PARTITIONS_{t.upper()}", default_parts) for t in PARTITIONED_TOPICS}
        metrics_raw = (_get(env, p + "METRICS_PORT") or "9108").strip().lower()
        if metrics_raw in ("off", "none", "disabled", "false"):
            metrics_port: int | None = None
        else:
            metrics_port = _int(env, p + "METRICS_PORT", 9108, minimum=0)
            if metrics_port > 65535:
                raise StreamSettingsError(f"{p}METRICS_PORT must be a port number, got {metrics_port}",
                                          variable=p + "METRICS_PORT")
        log_format = (_get(env, p + "LOG_FORMAT") or "json").lower()
        if log_format not in ("json", "text"):
            raise StreamSettingsError(f"{p}LOG_FORMAT must be json or text, got {log_format!r}",
                                      variable=p + "LOG_FORMAT")
        filters = _refs(_get(env, p + "FILTERS") or "demo,demo_tech")
        if not filters:
            raise StreamSettingsError(f"{p}FILTERS names no filter", variable=p + "FILTERS")
        return cls(
            kafka_bootstrap=_get(env, p + "KAFKA_BOOTSTRAP") or _get(env, "KAFKA_BOOTSTRAP"),
            redis_url=_get(env, p + "REDIS_URL") or _get(env, "REDIS_URL"),
            app_id=_get(env, p + "APP_ID") or "fluxscore",
            roles=parse_roles(_get(env, p + "ROLES") or "all"),
            filters=filters,
            shadow_filters=_refs(_get(env, p + "SHADOW_FILTERS")),
            topic_prefix=_get(env, p + "TOPIC_PREFIX") or "",
            topic_raw=_get(env, p + "TOPIC_RAW") or "articles.raw",
            topic_screened=_get(env, p + "TOPIC_SCREENED") or "articles.screened",
            topic_escalated=_get(env, p + "TOPIC_ESCALATED") or "articles.escalated",
            topic_dlq=_get(env, p + "TOPIC_DLQ") or "articles.dlq",
            topic_scores=_get(env, p + "TOPIC_SCORES") or "scores",
            topic_shadow=_get(env, p + "TOPIC_SHADOW") or "scores.shadow",
            topic_drift=_get(env, p + "TOPIC_DRIFT") or "monitor.drift",
            partitions=partitions,
            replication=_int(env, p + "REPLICATION", 1),
            prefilter_batch=_int(env, p + "PREFILTER_BATCH", 64),
            prefilter_within=_float(env, p + "PREFILTER_WITHIN", 0.2, minimum=0.001),
            probe_batch=_int(env, p + "PROBE_BATCH", 64),
            probe_within=_float(env, p + "PROBE_WITHIN", 0.5, minimum=0.001),
            model_batch=_int(env, p + "MODEL_BATCH", 64),
            model_within=_float(env, p + "MODEL_WITHIN", 1.0, minimum=0.001),
            stream_buffer=_int(env, p + "STREAM_BUFFER", 256),
            max_message_bytes=_int(env, p + "MAX_MESSAGE_BYTES", 1_048_576, minimum=16_384),
            metrics_host=_get(env, p + "METRICS_HOST") or "127.0.0.1",
            metrics_port=metrics_port,
            reload_interval=_float(env, p + "RELOAD_INTERVAL", 30.0),
            dedupe_ttl=_int(env, p + "DEDUPE_TTL", 7 * 24 * 3600),
            redis_prefix=_get(env, p + "REDIS_PREFIX") or "fluxscore",
            embedding_cache_ttl=_int(env, p + "EMBEDDING_CACHE_TTL", 0, minimum=0),
            retry_max_backoff=_float(env, p + "RETRY_MAX_BACKOFF", 5.0, minimum=0.01),
            session_timeout=_float(env, p + "SESSION_TIMEOUT", 10.0, minimum=0.1),
            heartbeat_interval=_float(env, p + "HEARTBEAT_INTERVAL", 1.0, minimum=0.05),
            rebalance_timeout=_float(env, p + "REBALANCE_TIMEOUT", 20.0, minimum=0.1),
            commit_interval=_float(env, p + "COMMIT_INTERVAL", 1.0, minimum=0.05),
            producer_max_batch_bytes=_int(env, p + "PRODUCER_MAX_BATCH_BYTES", 16384),
            monitor_reference_size=_int(env, p + "MONITOR_REFERENCE_SIZE", 500),
            monitor_window=_int(env, p + "MONITOR_WINDOW", 500),
            monitor_every=_int(env, p + "MONITOR_EVERY", 250),
            monitor_reference_file=Path(ref_file) if (ref_file := _get(env, p + "MONITOR_REFERENCE_FILE")) else None,
            log_format=log_format,  # type: ignore[arg-type]
            log_level=(_get(env, p + "LOG_LEVEL") or "INFO").upper(),
        )

    def with_roles(self, roles: str | list[str] | tuple[str, ...]) -> StreamSettings:
        return replace(self, roles=parse_roles(roles))

    @property
    def max_forward_bytes(self) -> int:
        """The largest value a worker produces: the message limit less room for key and headers."""
        return self.max_message_bytes - FORWARD_HEADROOM

    def check_limits(self, max_record_bytes: int) -> None:
        """Refuse a worker whose topics could not carry every record that validation accepts.

        An accepted article travels on to ``articles.screened`` with its prefilter results and commerce
        evidence beside it; with the validation limit above what the topics carry, valid articles would
        be dead-lettered one hop later instead of refused with a reason at the door.
        """
        if max_record_bytes > self.max_forward_bytes:
            raise StreamSettingsError(
                f"FLUXSCORE_MAX_RECORD_BYTES ({max_record_bytes}) must be at most FLUXSCORE_MAX_MESSAGE_BYTES "
                f"({self.max_message_bytes}) less {FORWARD_HEADROOM} bytes of headroom for what each hop adds "
                f"(at most {self.max_forward_bytes}); raise the broker's message.max.bytes and "
                "FLUXSCORE_MAX_MESSAGE_BYTES, or lower FLUXSCORE_MAX_RECORD_BYTES",
                variable="FLUXSCORE_MAX_RECORD_BYTES")

    @property
    def dead_letter_payload_bytes(self) -> int:
        """Payload bytes a dead letter keeps: base64 (4/3) plus the JSON around it must fit a message."""
        return max(1024, (self.max_message_bytes - 8192) * 3 // 4)

    def with_app_id(self, app_id: str) -> StreamSettings:
        return replace(self, app_id=app_id)

    def require_cluster(self) -> tuple[str, str]:
        """Bootstrap servers and Redis URL, or an error naming the variables to set."""
        missing = [name for name, value in (("FLUXSCORE_KAFKA_BOOTSTRAP (or KAFKA_BOOTSTRAP)", self.kafka_bootstrap),
                                            ("FLUXSCORE_REDIS_URL (or REDIS_URL)", self.redis_url)) if not value]
        if missing:
            raise StreamSettingsError("set " + " and ".join(missing) + " (or run `fluxscore demo`, which starts "
                                      "an embedded broker and Redis)")
        assert self.kafka_bootstrap is not None and self.redis_url is not None
        return self.kafka_bootstrap, self.redis_url
