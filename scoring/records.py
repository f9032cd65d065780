"""The data that flows between stages and out of the scorer.

A :class:`ScoreRecord` is the product's output contract: keyed by (article id, filter, package_hash, text
hash), with enough provenance that a consumer can tell exactly which models and config produced it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from scoring.aggregate import Tier

# The key part of records written before records named their text (``text_hash`` absent): such a record
# still has a key, one that no newly scored record can take (a text hash is hex).
NO_TEXT_HASH = "-"


def text_hash(text: str) -> str:
    """Short sha256 of the text the models read (:func:`scoring.text.article_text`): the part of the record
    key that tells an edited article from a redelivered one.

    fluxscore's own hash wins over a ``content_hash`` field a FluxusSource collector may send: that one
    covers whatever the collector chose to hash (raw markup, the content without the title…), so it can
    change when the scored text does not (a needless re-score) or stay when a scored part changed (an
    edit never scored). This one changes exactly when the models' input does.

    >>> text_hash("Title\\n\\nBody")
    '45777c14d90fa79d'
    """
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


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


class InputStats(_Record):
    """What the drift monitor watches of the input itself; a function of the article alone, so the record
    stays byte-identical when the same article is scored again."""

    text_chars: int = Field(ge=0, description="characters of the text the models read (title + cleaned content)")
    language: str = Field(min_length=1, description="the article's own `language` (primary subtag, lower case), "
                                                    "else a detector's guess when one is installed, else `unknown`")


class ScoreRecord(_Record):
    article_id: str
    filter: FilterRef
    text_hash: str | None = Field(None, min_length=1, description=(
        "short sha256 of the text the models read (title + cleaned content): part of the record key, so an "
        "edited article gets a record of its own (absent in records written before it was recorded)"))
    supersedes: str | None = Field(None, description=(
        "key of the record this one replaces as the latest for (article, filter): an earlier text of the article "
        "or an earlier package version (stream only; null for the first, and after Redis forgot the earlier)"))
    model_hashes: dict[str, str]
    model_revisions: dict[str, str] = Field(default_factory=dict, description=(
        "model role (`embedding_model`, `commerce_embedding_model`, `base_model`) -> what was loaded for this "
        "record: `rev:<commit>` of a Hugging Face hub snapshot, or `sha256:<16 hex>` over the weight and config "
        "files of a local directory; only the models the record's stage ran"))
    fluxscore_version: str | None = Field(None, description="version of the fluxscore package that scored it")
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
    input: InputStats | None = Field(None, description="text length and language of the article (absent in "
                                                       "records written before they were recorded)")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="per-stage milliseconds; empty on "
                                         "Kafka, where the fluxscore.timings_ms header carries them")
    scored_at: datetime | None = Field(default_factory=lambda: datetime.now(UTC),
                                       description="when the record was computed; null on Kafka, where the "
                                                   "fluxscore.scored_at header carries it")

    @property
    def record_key(self) -> RecordKey:
        """The idempotency key: same article text and package give the same key."""
        return RecordKey(self.article_id, self.filter.name, self.filter.package_hash, self.text_hash or NO_TEXT_HASH)

    @property
    def key(self) -> str:
        """:attr:`record_key` as text (the Redis key and the ``fluxscore.record_key`` header)."""
        return self.record_key.format()

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


@dataclass(frozen=True, slots=True)
class RecordKey:
    """One record per (article id, filter, package_hash, text_hash); written
    ``article_id|filter|package_hash|text_hash``.

    The text form is what Redis keys and the ``fluxscore.record_key`` header hold. Article ids come from
    producers and may contain ``|``; the other parts cannot, so :meth:`parse` splits from the right:

    >>> key = RecordKey.parse(b"feed|42|uplifting|3f9a0c|9e107d9d372bb682")
    >>> key.article_id, key.filter, key.package_hash, key.text_hash
    ('feed|42', 'uplifting', '3f9a0c', '9e107d9d372bb682')
    >>> str(key)
    'feed|42|uplifting|3f9a0c|9e107d9d372bb682'
    >>> key.article_filter
    'feed|42|uplifting'
    >>> RecordKey.parse("uplifting|3f9a0c|9e107d")
    Traceback (most recent call last):
    ...
    ValueError: malformed record key 'uplifting|3f9a0c|9e107d': expected article_id|filter|package_hash|text_hash
    """

    article_id: str
    filter: str
    package_hash: str
    text_hash: str

    SEPARATOR: ClassVar[str] = "|"

    def __post_init__(self) -> None:
        # A separator inside the last three parts would make the text form parse back as another key.
        for name in ("filter", "package_hash", "text_hash"):
            value = getattr(self, name)
            if not value or self.SEPARATOR in value:
                raise ValueError(f"record key {name} must be non-empty without {self.SEPARATOR!r}: {value!r}")
        if not self.article_id:
            raise ValueError("record key article_id must be non-empty")

    def format(self) -> str:
        return self.SEPARATOR.join((self.article_id, self.filter, self.package_hash, self.text_hash))

    @property
    def article_filter(self) -> str:
        """``article_id|filter``: what every version of one article's record for one filter shares (the
        "latest record" pointer the stream keeps next to the dedupe entries)."""
        return self.SEPARATOR.join((self.article_id, self.filter))

    def __str__(self) -> str:
        return self.format()

    def encode(self) -> bytes:
        """The text form as UTF-8: a header value, byte-identical to what :meth:`parse` reads."""
        return self.format().encode()

    @classmethod
    def parse(cls, raw: str | bytes) -> RecordKey:
        """The key a Redis key suffix or a ``fluxscore.record_key`` header holds; ``ValueError`` if malformed."""
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            raise ValueError(f"malformed record key {raw!r}: not UTF-8") from None
        parts = text.rsplit(cls.SEPARATOR, 3)
        if len(parts) != 4 or not all(parts):
            raise ValueError(f"malformed record key {text!r}: expected article_id|filter|package_hash|text_hash")
        return cls(*parts)
