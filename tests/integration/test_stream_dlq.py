"""Malformed records land in the DLQ with their reasons, and valid records keep flowing."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from tests.hostile import DEEPEST, nest
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
    # Poison records that made every worker reading them exit, again after each restart.
    json.dumps({"id": "deep", "title": "t", "content": "x", "metadata": nest(1, 300, as_list=False)}).encode():
        ("deep", "nested deeper than 32 levels"),
    json.dumps({"id": "deep-sur", "content": "x\ud800", "metadata": nest("\udc00", 400, as_list=True)}).encode():
        ("deep-sur", "nested deeper than 32 levels"),
    DEEPEST: (None, "not valid JSON"),
    orjson.dumps({"id": "\u200b\u200d", "title": "Invisible", "content": "x"}): ("\u200b\u200d", "must not be blank"),
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


def test_limits_are_consistent_what_validation_accepts_travels_to_the_end(stream_env, workers,
                                                                           tmp_path: Path) -> None:
    # A valid article just below the record limit must be scored, not dead-lettered one hop later for a
    # message too large (the screened message carries the text once); one just above it is refused at the
    # door with its reason and never scored.
    workers(stream_env.env(FLUXSCORE_MAX_MESSAGE_BYTES="196608", FLUXSCORE_MAX_RECORD_BYTES="65536",
                           FLUXSCORE_MAX_CONTENT_BYTES="65536"))
    near = orjson.dumps({"id": "near-limit", "title": "A long report", "content": "Word " * 12_800})
    over = orjson.dumps({"id": "over-limit", "title": "A longer report", "content": "Word " * 13_200})
    assert len(near) < 65536 < len(over)
    valid = synthetic_articles(6, seed=12)
    produce_lines(stream_env, [*valid[:3], near, over, *valid[3:]], tmp_path / "big.jsonl")

    expected = {(orjson.loads(v)["id"], f) for v in [*valid, near] for f in STREAM_FILTERS}
    got = collect(stream_env, lambda c: c.pairs >= expected and len(c.dead) >= 1, timeout=180)
    assert got.pairs == expected, "the article below the limit is scored by every filter; the other never"
    (dead,) = got.dead
    assert (dead.article_id, dead.stage) == ("over-limit", "prefilter")
    assert "above the limit of 65536 bytes" in dead.message
