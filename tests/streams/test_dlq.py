from __future__ import annotations

import hashlib

import orjson

from scoring.article import parse_article
from scoring.exceptions import ArticleValidationError, ScoringError
from streams.dlq import DeadLetterRecord, Source, article_id_of, build_dead_letter

SOURCE = Source(topic="articles.raw", partition=3, offset=41, key=b"k-1")


def _error(payload: bytes) -> ArticleValidationError:
    try:
        parse_article(payload)
    except ArticleValidationError as exc:
        return exc
    raise AssertionError("payload parsed")


def test_dead_letter_carries_reason_stage_and_source_in_headers_and_body() -> None:
    payload = orjson.dumps({"id": "a-1", "title": 5})
    letter = build_dead_letter(payload, SOURCE, "prefilter", _error(payload), worker="w")
    headers = dict(letter.headers)
    assert headers["fluxscore.stage"] == b"prefilter"
    assert headers["fluxscore.error.type"] == b"scoring.exceptions.ArticleValidationError"
    assert b"title" in headers["fluxscore.error.message"]
    assert (headers["fluxscore.source.topic"], headers["fluxscore.source.partition"],
            headers["fluxscore.source.offset"]) == (b"articles.raw", b"3", b"41")
    assert headers["fluxscore.article_id"] == b"a-1"
    assert letter.key == b"a-1"
    back = DeadLetterRecord.parse(letter.value, letter.headers)
    assert back.payload == payload and back.article_id == "a-1" and back.source == SOURCE
    assert back.stage == "prefilter" and "title" in back.message and not back.payload_truncated
    assert orjson.loads(letter.value)["error"]["context"] == {"article_id": "a-1", "field": "title"}


def test_invalid_utf8_payload_survives_byte_for_byte() -> None:
    payload = b'{"id": "x", "title": "\xff\xfe"}'
    letter = build_dead_letter(payload, SOURCE, "prefilter", _error(payload))
    back = DeadLetterRecord.parse(letter.value, letter.headers)
    assert back.payload == payload
    assert back.article_id is None  # not decodable: no id is invented
    assert letter.key == SOURCE.key


def test_oversize_payload_keeps_head_size_and_digest() -> None:
    payload = b"x" * 5000
    letter = build_dead_letter(payload, SOURCE, "probe", ValueError("boom"), max_payload_bytes=1000)
    body = orjson.loads(letter.value)
    assert body["payload_truncated"] is True and body["payload_bytes"] == 5000
    assert body["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert DeadLetterRecord.parse(letter.value).payload == payload[:1000]
    assert body["error"] == {"type": "builtins.ValueError", "message": "boom", "context": {}}


def test_article_id_comes_from_the_error_or_the_payload() -> None:
    assert article_id_of(ScoringError("x", article_id="from-error"), b'{"id": "from-payload"}') == "from-error"
    assert article_id_of(ValueError("x"), b'{"id": "from-payload"}') == "from-payload"
    assert article_id_of(ValueError("x"), b'{"article": {"id": "screened"}}') == "screened"
    assert article_id_of(ValueError("x"), b'{"article_id": "esc"}') == "esc"
    assert article_id_of(ValueError("x"), b"[1, 2]") is None
    assert article_id_of(ValueError("x"), b"\xff") is None
