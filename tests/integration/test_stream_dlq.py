"""Malformed records land in the DLQ with their reasons, and valid records keep flowing."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import STREAM_FILTERS, collect, produce_lines, synthetic_articles

pytestmark = pytest.mark.integration

MAX_CONTENT = 4000

# payload -> (article id the dead letter names, words its message must contain)
MALFORMED: dict[bytes, tuple[str | None, str]] = {
    b"this is not json {": (None, "not valid JSON"),
    orjson.dumps({"title": "No id here", "content": "Some content."}): (None, "'id'"),
    orjson.dumps({"id": 12345, "title": "Integer id", "content": "x"}): (None, "'id'"),
    orjson.dumps({"id": "bad-tags", "title": "Tags", "content": "x", "tags": "not-a-list"}): ("bad-tags", "'tags'"),
    orjson.dumps({"id": "too-big", "title": "Huge", "content": "a" * (MAX_CONTENT + 1)}): ("too-big", "limit"),
    b'{"id": "bad-utf8", "title": "caf\xe9 \xff\xfe", "content": "x"}': (None, "UTF-8"),
    orjson.dumps(["a", "list"]): (None, "JSON object"),
}


def test_malformed_records_go_to_the_dlq(stream_env, workers, tmp_path: Path) -> None:
    workers(stream_env.env(FLUXSCORE_MAX_CONTENT_BYTES=str(MAX_CONTENT)))
    valid = synthetic_articles(30, seed=11)
    # Bad records interleaved with good ones, so a batch holds both.
    lines: list[bytes] = []
    bad = list(MALFORMED)
    for i, line in enumerate(valid):
        lines.append(line)
        if i % 4 == 0 and bad:
            lines.append(bad.pop())
    lines.extend(bad)
    produce_lines(stream_env, lines, tmp_path / "mixed.jsonl")

    expected = {(orjson.loads(v)["id"], f) for v in valid for f in STREAM_FILTERS}
    got = collect(stream_env, lambda c: len(c.records) >= len(expected) and len(c.dead) >= len(MALFORMED),
                  timeout=240)

    assert got.pairs == expected
    assert len(got.dead) == len(MALFORMED)
    by_payload = {d.payload: d for d in got.dead}
    assert set(by_payload) == set(MALFORMED), "each dead letter keeps its original bytes"
    offsets = set()
    for payload, (article_id, words) in MALFORMED.items():
        dead = by_payload[payload]
        assert dead.stage == "prefilter"
        assert dead.error_type == "scoring.exceptions.ArticleValidationError"
        assert words in dead.message, dead.message
        assert dead.article_id == article_id
        assert dead.source.topic == stream_env.topic("articles.raw")
        assert dead.headers["fluxscore.stage"] == "prefilter"
        assert dead.headers["fluxscore.error.type"] == dead.error_type
        assert dead.headers["fluxscore.source.offset"] == str(dead.source.offset)
        assert dead.headers["fluxscore.source.partition"] == str(dead.source.partition)
        offsets.add((dead.source.partition, dead.source.offset))
    assert len(offsets) == len(MALFORMED)


def test_a_valid_article_too_large_to_forward_is_dead_lettered(stream_env, workers, tmp_path: Path) -> None:
    # The screened message carries the article and its model text, about twice the content: with a
    # 32 KB message limit a 20 KB article is valid but cannot travel on. It must not block its partition.
    workers(stream_env.env(FLUXSCORE_MAX_MESSAGE_BYTES="32768"))
    big = orjson.dumps({"id": "big-1", "title": "A long report", "content": "Word " * 4000})
    valid = synthetic_articles(10, seed=12)
    produce_lines(stream_env, [*valid[:5], big, *valid[5:]], tmp_path / "big.jsonl")

    expected = {(orjson.loads(v)["id"], f) for v in valid for f in STREAM_FILTERS}
    got = collect(stream_env, lambda c: c.pairs >= expected and len(c.dead) >= 1, timeout=180)
    assert got.pairs - expected <= {("big-1", f) for f in STREAM_FILTERS}, "only blocked pairs of big-1 may score"
    (dead,) = got.dead
    assert (dead.article_id, dead.stage) == ("big-1", "prefilter")
    assert dead.error_type.endswith("MessageSizeTooLargeError")
    assert dead.payload_truncated and big.startswith(dead.payload)
