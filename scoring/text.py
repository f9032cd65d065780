"""Model input text: cleaning, and head+tail truncation by tokens that respects the model's limit.

Training and serving both build their inputs here so the models see the same text in both.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, Protocol

from scoring.article import Article

_TAG = re.compile(r"<(?:script|style)\b[^>]*>.*?</(?:script|style)\s*>|<!--.*?-->|</?[A-Za-z][^<>]*>",
                  re.IGNORECASE | re.DOTALL)
# Zero-width characters and BiDi controls: invisible, they change tokenisation and can hide text.
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*(?:\n\s*)+")

# Upper bound of characters per token used to cut very long texts *before* tokenising, so a 1 MB
# article costs no more to prepare than a long one. Real tokens average 3-5 characters.
CHARS_PER_TOKEN_BOUND = 32


def clean_text(text: str) -> str:
    """Decode HTML entities, drop tags, invisible and control characters; normalise whitespace."""
    if not text:
        return ""
    text = html.unescape(_TAG.sub(" ", text))
    # A second pass: entity-escaped markup (``&lt;b&gt;``) becomes tags only after unescaping.
    if "<" in text:
        text = _TAG.sub(" ", text)
    text = unicodedata.normalize("NFC", _INVISIBLE.sub("", text))
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    text = _SPACES.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def article_text(article: Article) -> str:
    """``title + "\\n\\n" + content``, each cleaned; the one text every model sees."""
    title, content = clean_text(article.title), clean_text(article.content)
    if title and content:
        return f"{title}\n\n{content}"
    return title or content


class Tokenizer(Protocol):
    def __call__(self, text: Any, **kwargs: Any) -> Any: ...


def special_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after one sequence ([CLS]…[SEP], <bos>…, <s>…</s>).

    Learnt by encoding a probe text with and without special tokens, because fast tokenizers in
    transformers 5 no longer expose ``build_inputs_with_special_tokens``.
    """
    cached = getattr(tokenizer, "_fluxscore_specials", None)
    if cached is not None:
        return cached
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            result = (list(full[:i]), list(full[i + len(plain):]))
            break
    else:
        raise ValueError("cannot locate the text among the tokenizer's special tokens")
    try:
        tokenizer._fluxscore_specials = result  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return result


def head_tail_budget(head: int, tail: int, max_length: int, n_special: int) -> tuple[int, int]:
    """Split the model's room (``max_length`` minus special tokens) into head and tail token counts."""
    room = max_length - n_special
    if room <= 0:
        raise ValueError(f"max_length {max_length} leaves no room beside {n_special} special tokens")
    keep_head = min(head, room)
    keep_tail = min(tail, room - keep_head)
    return keep_head, keep_tail


def head_tail_ids(ids: Sequence[int], head: int, tail: int) -> list[int]:
    """First ``head`` and last ``tail`` ids; the whole sequence when it fits."""
    if len(ids) <= head + tail:
        return list(ids)
    return list(ids[:head]) + (list(ids[-tail:]) if tail else [])


def encode_head_tail(tokenizer: Tokenizer, texts: Sequence[str], *, head: int, tail: int,
                     max_length: int) -> list[list[int]]:
    """Token ids with special tokens, head+tail truncated; never longer than ``max_length``."""
    prefix, suffix = special_tokens(tokenizer)
    keep_head, keep_tail = head_tail_budget(head, tail, max_length, len(prefix) + len(suffix))
    limit = (keep_head + keep_tail) * CHARS_PER_TOKEN_BOUND
    cut: list[str] = []
    for text in texts:
        if len(text) > limit:
            text = text[: keep_head * CHARS_PER_TOKEN_BOUND] + " " + (
                text[-keep_tail * CHARS_PER_TOKEN_BOUND:] if keep_tail else "")
        cut.append(text)
    if not cut:
        return []
    encoded = tokenizer(cut, add_special_tokens=False, truncation=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)["input_ids"]
    return [prefix + head_tail_ids(ids, keep_head, keep_tail) + suffix for ids in encoded]
