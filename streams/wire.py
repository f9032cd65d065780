"""Encoding of the items that travel between stages on Kafka (the pipeline's own pydantic models)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from scoring.pipeline import Escalation, Screened
from scoring.schema import format_validation_error
from streams.dlq import article_id_of
from streams.exceptions import WireFormatError

M = TypeVar("M", bound=BaseModel)
# Score messages are keyed by article id (one article's records share a partition, in order); this header
# names the record itself: article|filter|package_hash|text_hash, one per (article, filter, version, text).
RECORD_KEY_HEADER = "fluxscore.record_key"


def record_key_of(key: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> bytes | None:
    """The record key of a message read from a ``scores.*`` topic."""
    for name, value in headers or ():
        if name == RECORD_KEY_HEADER:
            return value
    return key


def encode(item: BaseModel) -> bytes:
    return item.model_dump_json().encode()


def encode_screened(item: Screened) -> bytes:
    """A screened article without its raw ``content``: ``text`` (title + cleaned content) is what the
    probe reads, and carrying both would double the message, so an article the validation limit
    accepts could not be forwarded."""
    return item.model_dump_json(exclude={"article": {"content"}}).encode()


def _decode(model: type[M], payload: bytes, stage: str) -> M:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        # A dead letter names one reason: the first problem, and how many more there were.
        raise WireFormatError(f"not a valid {model.__name__}: {format_validation_error(exc, first_only=True)}",
                              stage=stage, article_id=article_id_of(exc, payload)) from None


def decode_screened(payload: bytes) -> Screened:
    return _decode(Screened, payload, "probe")


def decode_escalation(payload: bytes) -> Escalation:
    return _decode(Escalation, payload, "model")
