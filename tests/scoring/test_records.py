"""The record key: one typed value, one text form (Redis keys and the ``fluxscore.record_key`` header)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoring.aggregate import Tier
from scoring.records import FilterRef, PrefilterResult, RecordKey, ScoreRecord, StageUsed


def test_text_form_is_article_filter_hash() -> None:
    key = RecordKey("a-1", "uplifting", "3f9a0c")
    assert key.format() == str(key) == "a-1|uplifting|3f9a0c"
    assert key.encode() == b"a-1|uplifting|3f9a0c"
    assert RecordKey.parse(key.encode()) == RecordKey.parse(key.format()) == key


def test_article_ids_may_hold_the_separator() -> None:
    key = RecordKey.parse("feed|2024|07|demo|abc")
    assert (key.article_id, key.filter, key.package_hash) == ("feed|2024|07", "demo", "abc")


@pytest.mark.parametrize("raw", ["", "only-one", "a|b", "a||h", "a|f|", "|f|h", b"\xff|f|h"])
def test_malformed_keys_are_refused_clearly(raw: str | bytes) -> None:
    with pytest.raises(ValueError, match="record key"):
        RecordKey.parse(raw)


@pytest.mark.parametrize(("article_id", "filter_name", "package_hash"),
                         [("a", "f|x", "h"), ("a", "f", "h|x"), ("a", "", "h"), ("", "f", "h")])
def test_parts_that_would_not_parse_back_are_refused(article_id: str, filter_name: str, package_hash: str) -> None:
    with pytest.raises(ValueError, match="record key"):
        RecordKey(article_id, filter_name, package_hash)


@given(article_id=st.text(min_size=1), filter_name=st.text(min_size=1).filter(lambda s: "|" not in s),
       package_hash=st.text(alphabet="0123456789abcdef", min_size=1, max_size=64))
def test_format_and_parse_round_trip(article_id: str, filter_name: str, package_hash: str) -> None:
    key = RecordKey(article_id, filter_name, package_hash)
    assert RecordKey.parse(key.format()) == key


def test_score_record_key_is_the_typed_key_and_its_text() -> None:
    record = ScoreRecord(article_id="a|1", filter=FilterRef(name="demo", version="1.0.0", package_hash="abc123"),
                         model_hashes={}, stage=StageUsed.STAGE1, weighted_average=1.0, tier=Tier.LOW,
                         prefilter=PrefilterResult(passed=True))
    assert record.record_key == RecordKey("a|1", "demo", "abc123")
    assert record.key == "a|1|demo|abc123"
    # Usable as a dict key and set member, as the agents and the dedupe store use it.
    assert {record.record_key: 1}[RecordKey.parse(record.key)] == 1
