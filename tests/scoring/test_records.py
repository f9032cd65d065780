"""The record key: one typed value, one text form (Redis keys and the ``fluxscore.record_key`` header)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoring.aggregate import Tier
from scoring.article import parse_article
from scoring.records import NO_TEXT_HASH, FilterRef, PrefilterResult, RecordKey, ScoreRecord, StageUsed, text_hash
from scoring.text import article_text


def test_text_form_is_article_filter_hash_text() -> None:
    key = RecordKey("a-1", "uplifting", "3f9a0c", "9e107d9d372bb682")
    assert key.format() == str(key) == "a-1|uplifting|3f9a0c|9e107d9d372bb682"
    assert key.encode() == b"a-1|uplifting|3f9a0c|9e107d9d372bb682"
    assert RecordKey.parse(key.encode()) == RecordKey.parse(key.format()) == key
    assert key.article_filter == "a-1|uplifting"


def test_article_ids_may_hold_the_separator() -> None:
    key = RecordKey.parse("feed|2024|07|demo|abc|def0")
    assert (key.article_id, key.filter, key.package_hash, key.text_hash) == ("feed|2024|07", "demo", "abc", "def0")


@pytest.mark.parametrize("raw", ["", "only-one", "a|b", "a|f|h", "a||h|t", "a|f||t", "a|f|h|", "|f|h|t",
                                 b"\xff|f|h|t"])
def test_malformed_keys_are_refused_clearly(raw: str | bytes) -> None:
    with pytest.raises(ValueError, match="record key"):
        RecordKey.parse(raw)


@pytest.mark.parametrize(("article_id", "filter_name", "package_hash", "text"),
                         [("a", "f|x", "h", "t"), ("a", "f", "h|x", "t"), ("a", "f", "h", "t|x"), ("a", "", "h", "t"),
                          ("", "f", "h", "t"), ("a", "f", "h", "")])
def test_parts_that_would_not_parse_back_are_refused(article_id: str, filter_name: str, package_hash: str,
                                                     text: str) -> None:
    with pytest.raises(ValueError, match="record key"):
        RecordKey(article_id, filter_name, package_hash, text)


@given(article_id=st.text(min_size=1), filter_name=st.text(min_size=1).filter(lambda s: "|" not in s),
       package_hash=st.text(alphabet="0123456789abcdef", min_size=1, max_size=64),
       text=st.text())
def test_format_and_parse_round_trip(article_id: str, filter_name: str, package_hash: str, text: str) -> None:
    key = RecordKey(article_id, filter_name, package_hash, text_hash(text))
    assert RecordKey.parse(key.format()) == key
    assert RecordKey.parse(key.encode()) == key


def _record(**update: object) -> ScoreRecord:
    record = ScoreRecord(article_id="a|1", filter=FilterRef(name="demo", version="1.0.0", package_hash="abc123"),
                         text_hash="9e107d9d372bb682", model_hashes={}, stage=StageUsed.STAGE1, weighted_average=1.0,
                         tier=Tier.LOW, prefilter=PrefilterResult(passed=True))
    return record.model_copy(update=update)


def test_score_record_key_is_the_typed_key_and_its_text() -> None:
    record = _record()
    assert record.record_key == RecordKey("a|1", "demo", "abc123", "9e107d9d372bb682")
    assert record.key == "a|1|demo|abc123|9e107d9d372bb682"
    # Usable as a dict key and set member, as the agents and the dedupe store use it.
    assert {record.record_key: 1}[RecordKey.parse(record.key)] == 1


def test_a_record_written_before_text_hashes_still_has_a_key_no_new_record_takes() -> None:
    old = ScoreRecord.from_json(_record().model_dump(mode="json", exclude={"text_hash"}))
    assert old.text_hash is None and old.key == f"a|1|demo|abc123|{NO_TEXT_HASH}"
    assert RecordKey.parse(old.key) == old.record_key
    assert all(c in "0123456789abcdef" for c in text_hash("anything")), "a text hash is hex, never the marker"


def test_the_text_hash_follows_the_scored_text_only() -> None:
    article = parse_article({"id": "a", "title": "Solar park opens", "content": "<p>It powers 4,000 homes.</p>",
                             "url": "https://x.example/a"})
    same_text = parse_article({"id": "a", "title": "Solar park opens", "content": "It powers 4,000 homes.",
                               "url": "https://elsewhere.example/a", "content_hash": "producer-hash-2"})
    edited = parse_article({"id": "a", "title": "Solar park opens", "content": "It powers 6,000 homes."})
    retitled = parse_article({"id": "a", "title": "Solar park opens early", "content": "It powers 4,000 homes."})
    hashes = [text_hash(article_text(a)) for a in (article, same_text, edited, retitled)]
    assert hashes[0] == hashes[1], "markup, the url and a producer's content_hash do not change what is scored"
    assert len({hashes[0], hashes[2], hashes[3]}) == 3, "an edited content or title is another text"
    assert len(hashes[0]) == 16


def test_provenance_fields_round_trip() -> None:
    record = _record(supersedes="a|1|demo|abc123|0000000000000000",
                     model_revisions={"embedding_model": "sha256:0123456789abcdef", "base_model": "rev:deadbeef"},
                     fluxscore_version="1.2.3")
    again = ScoreRecord.from_json(record.to_json())
    assert again == record and again.to_json() == record.to_json()
    assert RecordKey.parse(again.supersedes or "").text_hash == "0000000000000000"
