import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoring.article import Article, clean_surrogates, parse_article
from scoring.exceptions import ArticleValidationError, FluxscoreError

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
