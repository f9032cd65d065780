"""The data that flows between stages and out of the scorer.

A :class:`ScoreRecord` is the product's output contract: keyed by (article id, filter, package_hash),
with enough provenance that a consumer can tell exactly which models and config produced it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from scoring.aggregate import Tier


class StageUsed(StrEnum):
    PREFILTER = "prefilter"   # blocked by the filter's own rules
    COMMERCE = "commerce"     # blocked by the universal commerce detector
    STAGE1 = "stage1"         # final on the embedding probe
    STAGE2 = "stage2"         # escalated to the student model


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PrefilterResult(_Record):
    passed: bool
    reason: str | None = None


class CommerceResult(_Record):
    blocked: bool
    score: float = Field(ge=0.0, le=1.0)
    reason: str | None = None


class FilterRef(_Record):
    name: str
    version: str
    package_hash: str


class DimensionScore(_Record):
    raw: float
    calibrated: float


class Normalized(_Record):
    method: str
    value: float


class ScoreRecord(_Record):
    article_id: str
    filter: FilterRef
    model_hashes: dict[str, str]
    stage: StageUsed
    stage1_estimate: float | None = Field(None, description="probe's calibrated weighted average")
    escalation_threshold: float | None = None
    dimensions: dict[str, DimensionScore] = Field(default_factory=dict)
    weighted_average: float
    tier: Tier
    gatekeeper_applied: bool = False
    gatekeeper_dimension: str | None = None
    normalized: Normalized | None = None
    prefilter: PrefilterResult
    commerce: CommerceResult | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict, description="per-stage milliseconds; empty on "
                                         "Kafka, where the fluxscore.timings_ms header carries them")
    scored_at: datetime | None = Field(default_factory=lambda: datetime.now(UTC),
                                       description="when the record was computed; null on Kafka, where the "
                                                   "fluxscore.scored_at header carries it")

    @property
    def key(self) -> str:
        """Kafka message key and idempotency key: same input and package give the same key."""
        return record_key(self.article_id, self.filter.name, self.filter.package_hash)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    def stable(self) -> ScoreRecord:
        """The record without what differs between two scorings of the same input (time, timings).

        What the stream publishes: an article redelivered after a crash, even with its idempotency
        entry in Redis gone, yields the same bytes, so a compacted topic or a downstream upsert sees
        no change. The volatile parts travel in message headers (:meth:`volatile_headers`).
        """
        return self.model_copy(update={"scored_at": None, "timings_ms": {}})

    def volatile_headers(self) -> list[tuple[str, bytes]]:
        headers = [("fluxscore.timings_ms", orjson.dumps(self.timings_ms))]
        if self.scored_at is not None:
            headers.append(("fluxscore.scored_at", self.scored_at.isoformat().encode()))
        return headers

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> ScoreRecord:
        return cls.model_validate(data if isinstance(data, dict) else orjson.loads(data))


def record_key(article_id: str, filter_name: str, package_hash: str) -> str:
    return f"{article_id}|{filter_name}|{package_hash}"
