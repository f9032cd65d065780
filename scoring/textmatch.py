"""The text-matching engine shared by the prefilter and the commerce detector: keywords and regexes.

Filter packages (``prefilter`` rules) and the commerce package (``commerce.yaml`` rule groups) both
match keywords and regular expressions against article text; one engine means one set of rules for
every language, stated here once because filters in many languages depend on them:

* **Keywords** are whole words or phrases. Boundaries are explicit lookarounds, not ``\\b``: a keyword
  edge that is a letter/digit must not touch another letter, digit, underscore or combining mark
  (so "art" matches neither "artículo", "party" nor a decomposed "art\\u0301"). Spaces inside a
  phrase match any run of whitespace.
* Scripts written **without spaces** between words (Han, Hiragana, Katakana, Hangul, Thai, Lao,
  Khmer, Myanmar) have no word boundaries to find, so a keyword edge in one of those scripts is a
  substring match: "東京" matches in "東京都". Korean is included because particles attach to nouns.
* **Case**: with ``case_sensitive: false`` keywords and text are both ``str.casefold()``-ed, so
  "STRASSE" matches "straße". Casefolding is locale-independent; we additionally fold "İ"
  (which casefolds to "i" + U+0307) to plain "i" so "İstanbul" matches "istanbul", while Turkish
  dotless "ı" stays a distinct letter. Regular expressions (patterns, overrides, positive
  patterns) use ``re.IGNORECASE`` instead — casefolding a regex would rewrite its syntax (``\\S``).
  With ``case_sensitive: true`` everything matches exactly.

Each match comes back as the keyword as written in the rules, whatever the case or spacing in the text:

>>> words = KeywordSet.build(["art", "Black Friday", "東京"], case_sensitive=False)
>>> words.find(words.prepare("ART week: BLACK  friday deals in 東京都, not in an artículo or a party"))
['art', 'Black Friday', '東京']
>>> compile_regex("(unclosed", case_sensitive=False, where="a rule")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
scoring.exceptions.PackageError: invalid regular expression in a rule: '(unclosed': missing ), ...
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from scoring.exceptions import PackageError

# Ranges of scripts written without spaces between words: keyword edges there match as substrings.
_NO_SPACE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0EFF),    # Thai, Lao
    (0x1000, 0x109F),    # Myanmar
    (0x1100, 0x11FF),    # Hangul Jamo
    (0x1780, 0x17FF),    # Khmer
    (0x3040, 0x30FF),    # Hiragana, Katakana
    (0x3130, 0x318F),    # Hangul compatibility Jamo
    (0x31F0, 0x31FF),    # Katakana extensions
    (0x3400, 0x4DBF),    # CJK extension A
    (0x4E00, 0x9FFF),    # CJK unified ideographs
    (0xAC00, 0xD7AF),    # Hangul syllables
    (0xF900, 0xFAFF),    # CJK compatibility ideographs
    (0xFF66, 0xFF9F),    # half-width Katakana
    (0x20000, 0x3FFFF),  # CJK extensions B+
)

_APOSTROPHES = "['\u2019\u02bc]"


def _no_space_script(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _NO_SPACE_RANGES)


@cache
def _mark_class() -> str:
    """A character-class body of every combining mark (Mn, Mc, Me), which ``\\w`` does not cover.

    Unassigned code points between marks are folded into the ranges: nothing in real text is there,
    and fewer ranges keep the compiled keyword regexes small.
    """
    ranges: list[list[int]] = []
    gap_ok = True
    for code in range(0x110000):
        category = unicodedata.category(chr(code))
        if category in ("Mn", "Mc", "Me"):
            if ranges and gap_ok:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
            gap_ok = True
        elif category != "Cn":
            gap_ok = False
    return "".join(chr(lo) if lo == hi else f"{chr(lo)}-{chr(hi)}" for lo, hi in ranges)


def fold(text: str) -> str:
    """Case-insensitive form of text (and of keywords): casefold, dotted capital I to plain i, NFC."""
    return unicodedata.normalize("NFC", text.casefold().replace("i\u0307", "i"))


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or unicodedata.category(ch).startswith("M")


def _units(keyword: str) -> list[str]:
    """A keyword as matching units: its characters, with each whitespace run as one " " unit."""
    units: list[str] = []
    for word in keyword.split():
        if units:
            units.append(" ")
        units.extend(word)
    if not units:
        raise ValueError("empty keyword")
    return units


def _needs_boundary(ch: str) -> bool:
    return _is_word_char(ch) and not _no_space_script(ch)


def keywords_regex_source(keywords: Iterable[str]) -> str:
    """One regex for many literal keywords, with Unicode-aware whole-word edges (see module doc).

    Keywords are merged into a trie so the engine tests each text position against one set of
    first characters instead of every keyword in turn, which keeps hundreds of keywords fast. The
    edge checks are factored out per kind of edge so the (large) class of word characters and
    combining marks appears a few times, not once per keyword.
    """
    end = "\0end"
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for kw in keywords:
        units = _units(kw)
        node = groups.setdefault((_needs_boundary(units[0]), _needs_boundary(units[-1])), {})
        for unit in units:
            node = node.setdefault(unit, {})
        node[end] = {}

    def unit_source(unit: str) -> str:
        if unit == " ":
            return r"\s+"
        # Typographic apostrophes are as common as the ASCII one in edited text.
        return _APOSTROPHES if unit in "'\u2019\u02bc" else re.escape(unit)

    def node_source(node: dict[str, Any]) -> str:
        branches = [unit_source(u) + node_source(child) for u, child in sorted(node.items()) if u != end]
        if end in node:
            branches.append("")  # empty last: longer continuations are tried first
        if len(branches) == 1:
            return branches[0]
        return "(?:" + "|".join(branches) + ")"

    word = f"[\\w{_mark_class()}]"
    sources = []
    # Both-edged groups first: they hold ordinary words, the common case.
    for (left, right), trie in sorted(groups.items(), reverse=True):
        if left:
            # The left edge is tested just after the first character (a two-character lookbehind) so
            # the pattern still begins with literals, which lets the engine skip ahead quickly.
            body = "|".join(f"{unit_source(u)}(?<!{word}{unit_source(u)}){node_source(child)}"
                            for u, child in sorted(trie.items()))
        else:
            body = node_source(trie)
        sources.append(f"(?:{body})" + (f"(?!{word})" if right else ""))
    return "|".join(sources)


def normalize_keyword(text: str, case_sensitive: bool) -> str:
    """Key under which a keyword and a text span it matched compare equal."""
    text = " ".join(text.split()).replace("\u2019", "'").replace("\u02bc", "'")
    return unicodedata.normalize("NFC", text) if case_sensitive else fold(text)


@dataclass(frozen=True)
class KeywordSet:
    """Keywords compiled into one alternation; maps each match back to the keyword as written."""

    regex: re.Pattern[str] | None
    by_key: dict[str, str]
    case_sensitive: bool

    @classmethod
    def build(cls, keywords: Iterable[str], case_sensitive: bool) -> KeywordSet:
        by_key: dict[str, str] = {}
        for kw in keywords:
            if kw.strip():
                by_key.setdefault(normalize_keyword(kw, case_sensitive), kw)
        if not by_key:
            return cls(None, {}, case_sensitive)
        # The trie tries longer continuations first, so "black friday" wins over "black".
        regex = re.compile(keywords_regex_source(by_key), re.UNICODE)
        return cls(regex, by_key, case_sensitive)

    def prepare(self, text: str) -> str:
        """The text form ``find`` expects; compute once per text and share between sets."""
        return unicodedata.normalize("NFC", text) if self.case_sensitive else fold(text)

    def find(self, prepared: str) -> list[str]:
        """Every occurrence (non-overlapping), each as the keyword as written in the rules."""
        if self.regex is None:
            return []
        return [self.by_key.get(normalize_keyword(m.group(0), self.case_sensitive), m.group(0))
                for m in self.regex.finditer(prepared)]


def compile_regex(pattern: str, *, case_sensitive: bool, where: str) -> re.Pattern[str]:
    """One rule regex; a pattern that does not compile is a package error naming ``where`` it is."""
    flags = re.UNICODE | (0 if case_sensitive else re.IGNORECASE)
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise PackageError(f"invalid regular expression in {where}: {pattern!r}: {exc}") from None
