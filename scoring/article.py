"""The FluxusSource article: schema, parsing from the wire, and the errors bad records raise.

Parsing is strict about what would make scoring wrong (no id, wrong types, oversize content, bytes
that are not UTF-8) and lenient about what producers legitimately vary: ``text`` is accepted for
``content``, unknown fields are kept and passed through, lone UTF-16 surrogates (which some scrapers
emit as ``\\ud800`` escapes) are replaced rather than failing the record.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from scoring.exceptions import ArticleValidationError

DEFAULT_MAX_CONTENT_BYTES = 1_000_000

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_surrogates(text: str) -> str:
    """Join valid surrogate pairs and replace lone surrogates with U+FFFD."""
    if not _LONE_SURROGATE.search(text):
        return text
    # Round-tripping through UTF-16 with surrogatepass turns escaped *pairs* into one code point.
    joined = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return _LONE_SURROGATE.sub("\ufffd", joined)


def _clean_tree(value: Any) -> Any:
    if isinstance(value, str):
        return clean_surrogates(value)
    if isinstance(value, list):
        return [_clean_tree(v) for v in value]
    if isinstance(value, dict):
        return {clean_surrogates(str(k)): _clean_tree(v) for k, v in value.items()}
    return value


class Article(BaseModel):
    """One news article as FluxusSource publishes it."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, str_strip_whitespace=False)

    id: str = Field(min_length=1, max_length=512)
    title: str = ""
    content: str = Field(default="", validation_alias=AliasChoices("content", "text"))
    source: str | None = None
    source_type: str | None = None
    url: str | None = None
    published_date: datetime | None = None
    collected_date: datetime | None = None
    language: str | None = None
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_is_text(cls, value: Any) -> Any:
        # Integers as ids are a producer bug that would silently collide with string ids downstream.
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__}")
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("title", "content", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("content")
    @classmethod
    def _content_size(cls, value: str, info: ValidationInfo) -> str:
        limit = (info.context or {}).get("max_content_bytes", DEFAULT_MAX_CONTENT_BYTES)
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise ValueError(f"content is {size} bytes, above the limit of {limit} bytes")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_none(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_none(cls, value: Any) -> Any:
        return {} if value is None else value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _decode(raw: bytes | str) -> Any:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise ArticleValidationError(f"record is not valid UTF-8: {uexc}") from None
        if "surrogate" not in str(exc):
            raise ArticleValidationError(f"record is not valid JSON: {exc}") from None
        try:
            # orjson refuses lone surrogate escapes; the stdlib parser keeps them so we can clean them.
            return json.loads(text)
        except json.JSONDecodeError as exc2:
            raise ArticleValidationError(f"record is not valid JSON: {exc2}") from None


def validate_article(record: dict[str, Any], *, max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES) -> Article:
    """Validate an already-decoded record; raises :class:`ArticleValidationError` naming id and field."""
    if not isinstance(record, dict):
        raise ArticleValidationError(f"record must be a JSON object, got {type(record).__name__}")
    record = _clean_tree(record)
    raw_id = record.get("id")
    article_id = raw_id if isinstance(raw_id, str) and raw_id.strip() else None
    try:
        return Article.model_validate(record, context={"max_content_bytes": max_content_bytes})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or None
        msg = first["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ArticleValidationError(f"invalid field {loc!r}: {msg}{more}", article_id=article_id,
                                     field=loc) from None


def parse_article(raw: bytes | str | dict[str, Any], *,
                  max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES) -> Article:
    """Parse one wire record (JSON bytes/str, or a dict) into an :class:`Article`."""
    record = raw if isinstance(raw, dict) else _decode(raw)
    return validate_article(record, max_content_bytes=max_content_bytes)
