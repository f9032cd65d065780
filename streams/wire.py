"""Encoding of the items that travel between stages on Kafka (the pipeline's own pydantic models)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from scoring.pipeline import Escalation, Screened
from streams.dlq import article_id_of
from streams.exceptions import WireFormatError

M = TypeVar("M", bound=BaseModel)


def encode(item: BaseModel) -> bytes:
    return item.model_dump_json().encode()


def _decode(model: type[M], payload: bytes, stage: str) -> M:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise WireFormatError(f"not a valid {model.__name__}: {where}: {first['msg']}", stage=stage,
                              article_id=article_id_of(exc, payload)) from None


def decode_screened(payload: bytes) -> Screened:
    return _decode(Screened, payload, "probe")


def decode_escalation(payload: bytes) -> Escalation:
    return _decode(Escalation, payload, "model")
