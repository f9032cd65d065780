import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.article import Article, Limits, clean_surrogates, parse_article
from scoring.exceptions import ArticleValidationError, FluxscoreError
from scoring.pipeline import Screened
from scoring.text import article_text
from streams.wire import encode_screened
from tests.hostile import DEEPEST, hostile_record, nest

GOOD = {
    "id": "a1", "title": "Title", "content": "Body", "source": "src", "source_type": "rss",
    "url": "https://example.com/x", "published_date": "2025-10-09T16:29:52",
    "collected_date": "2025-10-09T18:39:48.607742", "language": "en", "tags": ["t"], "metadata": {"k": 1},
}


def test_parses_fluxus_record_and_keeps_unknown_fields() -> None:
    article = parse_article(orjson.dumps({**GOOD, "extra_field": {"nested": True}}))
    assert article.id == "a1"
    assert article.published_date is not None and article.published_date.year == 2025
    assert article.to_dict()["extra_field"] == {"nested": True}


def test_text_is_an_alias_of_content() -> None:
    assert parse_article({"id": "x", "text": "hello"}).content == "hello"


@pytest.mark.parametrize(
    ("raw", "field", "article_id"),
    [
        (b'{"title": "no id"}', "id", None),
        (b'{"id": 7}', "id", None),
        (b'{"id": "  "}', "id", None),
        (b'{"id": "a", "tags": "x"}', "tags", "a"),
        (b'{"id": "a", "metadata": [1]}', "metadata", "a"),
        (b'{"id": "a", "published_date": "yesterday-ish"}', "published_date", "a"),
    ],
)
def test_invalid_fields_name_article_and_field(raw: bytes, field: str, article_id: str | None) -> None:
    with pytest.raises(ArticleValidationError) as info:
        parse_article(raw)
    assert info.value.field == field
    assert info.value.article_id == article_id
    assert isinstance(info.value, FluxscoreError)


@pytest.mark.parametrize(("raw", "words"), [(b"not json", "not valid JSON"), (b'{"id": "a", "c": "\xff"}', "UTF-8"),
                                            (b"[1, 2]", "JSON object")])
def test_undecodable_records(raw: bytes, words: str) -> None:
    with pytest.raises(ArticleValidationError, match=words):
        parse_article(raw)


def test_oversize_content_rejected_with_limit() -> None:
    with pytest.raises(ArticleValidationError, match="above the limit") as info:
        parse_article({"id": "big", "content": "é" * 600}, max_content_bytes=1000)
    assert info.value.article_id == "big"
    assert info.value.field == "content"
    assert parse_article({"id": "ok", "content": "é" * 500}, max_content_bytes=1000).id == "ok"


def test_lone_surrogates_cleaned_pairs_joined() -> None:
    article = parse_article(b'{"id": "s", "content": "a\\ud800b \\ud83d\\ude00"}')
    assert article.content == "a\ufffdb \U0001f600"
    article.to_json()  # must serialise


@given(st.text())
def test_clean_surrogates_always_encodable(text: str) -> None:
    clean_surrogates(text).encode("utf-8")


def test_article_is_frozen() -> None:
    article = Article(id="x")
    with pytest.raises(ValueError, match="frozen"):
        article.id = "y"  # type: ignore[misc]


# -- hostile records (the [hardening] findings) ------------------------------------------------------

@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("where", ["metadata", "tags", "extra"])
def test_deep_nesting_is_refused_with_a_reason(where: str, as_list: bool) -> None:
    deep = nest("x", 300, as_list=as_list)
    record = {"id": "deep", "content": "c", where: [deep] if where == "tags" else deep}
    raw = json.dumps(record).encode()
    with pytest.raises(ArticleValidationError, match="nested deeper than 32 levels") as info:
        parse_article(raw)
    assert info.value.article_id == "deep"


def test_deep_nesting_with_a_lone_surrogate_takes_the_same_path() -> None:
    # A lone surrogate escape makes orjson refuse the record and the stdlib parser take over.
    raw = json.dumps({"id": "s\ud800", "metadata": nest("\udc00", 300, as_list=False)}).encode()
    with pytest.raises(ArticleValidationError, match="nested deeper"):
        parse_article(raw)
    with pytest.raises(ArticleValidationError, match="not valid JSON"):
        parse_article(DEEPEST)


def test_the_depth_limit_is_inclusive() -> None:
    limits = Limits(max_depth=4)
    assert parse_article({"id": "a", "metadata": {"b": {"c": [1]}}}, limits=limits).id == "a"
    with pytest.raises(ArticleValidationError, match="deeper than 4"):
        parse_article({"id": "a", "metadata": {"b": {"c": [[1]]}}}, limits=limits)


def test_metadata_size_and_record_size_are_bounded() -> None:
    with pytest.raises(ArticleValidationError, match="metadata and tags are") as info:
        parse_article({"id": "m", "metadata": {"blob": "x" * 70_000}})
    assert info.value.field == "metadata"
    with pytest.raises(ArticleValidationError, match=r"record is 20\d\d bytes, above the limit of 1500 bytes"):
        parse_article(orjson.dumps({"id": "r", "content": "x" * 2000}), limits=Limits(max_record_bytes=1500))
    with pytest.raises(ArticleValidationError, match="more than 100 values"):
        parse_article({"id": "w", "metadata": {str(i): i for i in range(200)}}, limits=Limits(max_values=100))


@pytest.mark.parametrize("blank", ["\u200b", " \u200b\u200d ", "\ufeff", "\u202e\u2066", "\t\n\u3000"])
def test_ids_of_only_invisible_characters_are_refused(blank: str) -> None:
    with pytest.raises(ArticleValidationError, match="must not be blank") as info:
        parse_article(orjson.dumps({"id": blank, "content": "c"}))
    assert info.value.field == "id"
    assert parse_article({"id": "\u200ba"}).id == "\u200ba", "an id with one visible character is an id"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_record())
def test_every_hostile_record_is_an_article_or_one_validation_error(raw: bytes) -> None:
    try:
        article = parse_article(raw)
    except ArticleValidationError as exc:
        # The one error type, with a reason a person can act on (never an empty message).
        assert exc.message  # noqa: PT017
        return
    # Accepted: every later step that walks or encodes it must work too.
    text = article_text(article)
    assert len(article.to_json()) <= len(raw) * 2 + 1024
    forwarded = encode_screened(Screened(article=article, text=text, open_filters={}))
    assert len(forwarded) <= 900_000 + 64 * 1024
