"""The FluxusSource article: schema, parsing from the wire, and the errors bad records raise.

Parsing is strict about what would make scoring wrong (no id, wrong types, oversize content, bytes
that are not UTF-8) and lenient about what producers legitimately vary: ``text`` is accepted for
``content``, unknown fields are kept and passed through, lone UTF-16 surrogates (which some scrapers
emit as ``\\ud800`` escapes) are replaced rather than failing the record.

Its shape is bounded before anything walks it (:class:`Limits`): nesting depth, the number of values,
the size of ``metadata``/``tags`` and of the whole record. A record nested a few hundred levels deep
would otherwise pass here and then break every later step that recurses (text cleaning, the JSON
encoder when the record is forwarded), so it is one bad record, refused here with its reason, instead
of a worker that dies on it again after every restart.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from scoring.exceptions import ArticleValidationError
from scoring.schema import error_location, format_validation_error

DEFAULT_MAX_CONTENT_BYTES = 800_000
# The whole record as published (JSON bytes). Below the 1 MiB default of Kafka's message.max.bytes with
# room for what each hop adds (prefilter results, commerce evidence, headers): see streams.settings,
# which refuses a worker whose topics could not carry an accepted record.
DEFAULT_MAX_RECORD_BYTES = 900_000
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_VALUES = 20_000
DEFAULT_MAX_METADATA_BYTES = 64_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one record, enforced before any other step touches it."""

    max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    # Containers inside containers, counting the record itself as 1.
    max_depth: int = DEFAULT_MAX_DEPTH
    # Every scalar and container in the record: bounds the work of walking it.
    max_values: int = DEFAULT_MAX_VALUES
    # ``metadata`` and ``tags`` together, as compact JSON.
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES


DEFAULT_LIMITS = Limits()

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


def _is_blank(value: str) -> bool:
    """Only whitespace, separators, control or format (zero-width, BiDi) characters."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cc", "Cf") for ch in value)


def _check_shape(record: Any, limits: Limits) -> None:
    """Depth and value count, iteratively: a recursive walk is what a hostile record would break."""
    stack: list[tuple[Any, int]] = [(record, 1)]
    values = 0
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > limits.max_values:
            raise ValueError(f"record holds more than {limits.max_values} values")
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limits.max_depth:
            raise ValueError(f"record is nested deeper than {limits.max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


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
        if _is_blank(value):
            # Zero-width and BiDi characters are invisible: an id made of them looks empty to people
            # and collides with other "empty" ids after any normalisation downstream.
            raise ValueError("must not be blank (only whitespace or invisible characters)")
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


def _decode(raw: bytes | str, limits: Limits) -> Any:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(data) > limits.max_record_bytes:
        raise ArticleValidationError(f"record is {len(data)} bytes, above the limit of {limits.max_record_bytes} "
                                     "bytes")
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
        except RecursionError:
            # orjson stops at its own depth limit; the stdlib parser recurses until Python's.
            raise ArticleValidationError(f"record is nested deeper than {limits.max_depth} levels") from None


def _metadata_bytes(record: dict[str, Any]) -> int:
    return sum(len(orjson.dumps(record[k])) for k in ("metadata", "tags") if record.get(k) is not None)


def validate_article(record: dict[str, Any], *, max_content_bytes: int | None = None,
                     limits: Limits = DEFAULT_LIMITS) -> Article:
    """Validate an already-decoded record; raises :class:`ArticleValidationError` naming id and field."""
    if not isinstance(record, dict):
        raise ArticleValidationError(f"record must be a JSON object, got {type(record).__name__}")
    raw_id = record.get("id")
    article_id = raw_id if isinstance(raw_id, str) and not _is_blank(raw_id) else None
    try:
        _check_shape(record, limits)
    except ValueError as exc:
        raise ArticleValidationError(str(exc), article_id=clean_surrogates(article_id) if article_id else None) \
            from None
    record = _clean_tree(record)
    article_id = record.get("id") if article_id else None
    try:
        size = _metadata_bytes(record)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ArticleValidationError(f"metadata/tags cannot be encoded: {exc}", article_id=article_id,
                                     field="metadata") from None
    if size > limits.max_metadata_bytes:
        raise ArticleValidationError(f"metadata and tags are {size} bytes, above the limit of "
                                     f"{limits.max_metadata_bytes} bytes", article_id=article_id, field="metadata")
    max_content = limits.max_content_bytes if max_content_bytes is None else max_content_bytes
    try:
        return Article.model_validate(record, context={"max_content_bytes": max_content})
    except ValidationError as exc:
        # One reason per rejected record (a reject line, a dead letter): the first problem and a count.
        field = error_location(exc.errors()[0]) or None
        raise ArticleValidationError(f"invalid field {format_validation_error(exc, first_only=True, quoted=True)}",
                                     article_id=article_id, field=field) from None


def parse_article(raw: bytes | str | dict[str, Any], *, max_content_bytes: int | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> Article:
    """Parse one wire record (JSON bytes/str, or a dict) into an :class:`Article`.

    Every way a record can be bad ends in :class:`ArticleValidationError` with the reason:

    >>> parse_article(b'{"id": "a", "metadata": ' + b'{"k": ' * 40 + b'1' + b'}' * 40 + b'}')
    Traceback (most recent call last):
    ...
    scoring.exceptions.ArticleValidationError: record is nested deeper than 32 levels [article_id=a]
    >>> parse_article(b'{"id": "\\u200b "}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scoring.exceptions.ArticleValidationError: invalid field 'id': must not be blank ... [field=id]
    """
    record = raw if isinstance(raw, dict) else _decode(raw, limits)
    return validate_article(record, max_content_bytes=max_content_bytes, limits=limits)
