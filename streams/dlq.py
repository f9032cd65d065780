"""Dead-letter records: everything a stage could not process, with where it came from and why.

A DLQ message keeps the original payload (base64 in the JSON body, so bytes that are not UTF-8 survive)
and says the stage, exception type and message, article id when known, and the source topic,
partition and offset — both as Kafka headers (for routing without parsing) and in the body.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from scoring.exceptions import FluxscoreError

HEADER_PREFIX = "fluxscore."
# Kafka headers are not meant for whole documents; the body keeps the full message.
log = logging.getLogger(__name__)
_HEADER_MESSAGE_LIMIT = 1024
# A log line names the error; the whole message is in the dead letter itself.
_LOG_LIMIT = 1000
# Base64 grows a payload by 4/3; above this the dead letter would exceed Kafka's default 1 MB message
# limit, so it keeps the head of the payload, its size and sha256 (the source offset still has it all).
DEFAULT_MAX_PAYLOAD_BYTES = 700_000


@dataclass(frozen=True)
class Source:
    """Where a consumed message came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None


@dataclass(frozen=True)
class DeadLetter:
    """One message for the DLQ topic."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def article_id_of(exc: BaseException, payload: bytes | None = None) -> str | None:
    """The article id the error names, else the ``id`` a JSON payload carries (best effort)."""
    if isinstance(exc, FluxscoreError):
        found = exc.context.get("article_id")
        if isinstance(found, str) and found:
            return found
    if payload:
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if isinstance(body, dict):
            for key in ("id", "article_id"):
                value = body.get(key)
                if isinstance(value, str) and value:
                    return value
            article = body.get("article")
            if isinstance(article, dict) and isinstance(article.get("id"), str):
                return str(article["id"])
    return None


def build_dead_letter(payload: bytes, source: Source, stage: str, exc: BaseException, *,
                      article_id: str | None = None, worker: str | None = None,
                      max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> DeadLetter:
    """The DLQ message for ``payload`` that failed at ``stage`` with ``exc``."""
    article_id = article_id or article_id_of(exc, payload)
    message = exc.message if isinstance(exc, FluxscoreError) else str(exc)
    context = exc.context if isinstance(exc, FluxscoreError) else {}
    error_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
    body: dict[str, Any] = {
        "article_id": article_id,
        "stage": stage,
        "error": {"type": error_type, "message": message,
                  "context": {k: (v if isinstance(v, (str, int, float, bool)) else str(v))
                              for k, v in context.items()}},
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset,
                   "key_b64": base64.b64encode(source.key).decode() if source.key is not None else None},
        "payload_b64": base64.b64encode(payload[:max_payload_bytes]).decode(),
        "payload_bytes": len(payload),
        "payload_truncated": len(payload) > max_payload_bytes,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "failed_at": datetime.now(UTC).isoformat(),
        "worker": worker,
    }
    headers = [
        ("error.type", error_type),
        ("error.message", message[:_HEADER_MESSAGE_LIMIT]),
        ("stage", stage),
        ("source.topic", source.topic),
        ("source.partition", str(source.partition)),
        ("source.offset", str(source.offset)),
    ]
    if article_id:
        headers.append(("article_id", article_id))
    key = article_id.encode() if article_id else source.key
    return DeadLetter(key=key, value=orjson.dumps(body),
                      headers=[(HEADER_PREFIX + name, value.encode("utf-8", "replace")) for name, value in headers])


def logged_dead_letter(payload: bytes, source: Source, stage: str, exc: BaseException, *, worker: str | None,
                       max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> DeadLetter:
    """:func:`build_dead_letter`, with the one log line every worker writes for it (with its coordinates)."""
    log.info("dead letter", extra={"stage": stage, "error_type": type(exc).__name__, "error": str(exc)[:_LOG_LIMIT],
                                   "topic": source.topic, "partition": source.partition, "offset": source.offset})
    return build_dead_letter(payload, source, stage, exc, worker=worker, max_payload_bytes=max_payload_bytes)


@dataclass(frozen=True)
class DeadLetterRecord:
    """A DLQ message read back: for consumers, the demo summary and tests."""

    article_id: str | None
    stage: str
    error_type: str
    message: str
    source: Source
    payload: bytes
    payload_truncated: bool
    headers: dict[str, str]

    @classmethod
    def parse(cls, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> DeadLetterRecord:
        body = orjson.loads(value)
        src = body["source"]
        key = base64.b64decode(src["key_b64"]) if src.get("key_b64") else None
        return cls(article_id=body.get("article_id"), stage=body["stage"], error_type=body["error"]["type"],
                   message=body["error"]["message"],
                   source=Source(topic=src["topic"], partition=int(src["partition"]), offset=int(src["offset"]),
                                 key=key),
                   payload=base64.b64decode(body["payload_b64"]),
                   payload_truncated=bool(body.get("payload_truncated", False)),
                   headers={k: v.decode("utf-8", "replace") for k, v in (headers or [])})
