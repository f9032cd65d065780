from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.article import Article
from scoring.text import article_text, clean_text, encode_head_tail, head_tail_budget, head_tail_ids


class WordTokenizer:
    """A real (if simple) tokenizer with BERT-like special tokens, for property tests."""

    def __call__(self, text: Any, add_special_tokens: bool = True, **_: Any) -> dict[str, Any]:
        def ids(t: str) -> list[int]:
            body = [hash(w) % 1000 + 10 for w in t.split()]
            return [1, *body, 2] if add_special_tokens else body

        if isinstance(text, str):
            return {"input_ids": ids(text)}
        return {"input_ids": [ids(t) for t in text]}


def test_clean_text_removes_markup_entities_and_invisibles() -> None:
    raw = "<p>Caf&eacute; &amp; bar</p>\u200b<script>x()</script>\u202eevil\r\n\r\n\r\nnext  &lt;b&gt;bold&lt;/b&gt;"
    assert clean_text(raw) == "Café & bar evil\n\nnext bold"


def test_article_text_joins_title_and_content() -> None:
    assert article_text(Article(id="1", title=" T ", content="<b>C</b>")) == "T\n\nC"
    assert article_text(Article(id="1", title="", content="C")) == "C"


def test_head_tail_ids_keeps_both_ends() -> None:
    assert head_tail_ids(list(range(10)), 3, 2) == [0, 1, 2, 8, 9]
    assert head_tail_ids(list(range(4)), 3, 2) == [0, 1, 2, 3]
    assert head_tail_ids(list(range(10)), 3, 0) == [0, 1, 2]


def test_budget_rejects_impossible_limit() -> None:
    with pytest.raises(ValueError, match="no room"):
        head_tail_budget(10, 10, 2, 2)


@settings(max_examples=200, deadline=None)
@given(words=st.integers(0, 400), head=st.integers(1, 300), tail=st.integers(0, 300),
       max_length=st.integers(3, 256))
def test_head_tail_never_exceeds_max_length(words: int, head: int, tail: int, max_length: int) -> None:
    text = " ".join(f"w{i}" for i in range(words))
    [ids] = encode_head_tail(WordTokenizer(), [text], head=head, tail=tail, max_length=max_length)
    assert len(ids) <= max_length
    assert ids[0] == 1 and ids[-1] == 2
    room = max_length - 2
    kept_head = min(words, head, room)
    kept_tail = min(words - kept_head, tail, room - min(head, room))
    assert len(ids) - 2 == kept_head + kept_tail


def test_encode_keeps_tail_of_long_text() -> None:
    tok = WordTokenizer()
    text = " ".join(["start"] + ["mid"] * 5000 + ["end"])
    [ids] = encode_head_tail(tok, [text], head=4, tail=2, max_length=64)
    end_id = tok("end", add_special_tokens=False)["input_ids"][0]
    start_id = tok("start", add_special_tokens=False)["input_ids"][0]
    assert ids[1] == start_id and ids[-2] == end_id and len(ids) == 8


def test_encode_empty_batch() -> None:
    texts: Sequence[str] = []
    assert encode_head_tail(WordTokenizer(), texts, head=1, tail=1, max_length=8) == []
