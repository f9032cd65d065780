"""The keyword/regex engine the prefilter and the commerce detector share (:mod:`scoring.textmatch`)."""

from __future__ import annotations

import pytest

from scoring.exceptions import PackageError
from scoring.textmatch import KeywordSet, compile_regex, fold, normalize_keyword


def keywords(words: list[str], text: str, case_sensitive: bool = False) -> list[str]:
    ks = KeywordSet.build(words, case_sensitive)
    return ks.find(ks.prepare(text))


# --- keywords: Unicode and case --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("A new artículo on art.", ["art"]),
    ("party, smart, artist, arts", []),
    ("l'art moderne", ["art"]),
    ("art-deco and ART", ["art", "art"]),
    ("art\u0301 (decomposed accent)", []),
    ("_art art_ art9", []),
])
def test_art_is_a_whole_word(text: str, expected: list[str]) -> None:
    assert keywords(["art"], text) == expected


def test_accented_keywords_have_unicode_boundaries() -> None:
    assert keywords(["café"], "Un café, des cafés, cafétéria") == ["café"]
    assert keywords(["naïve"], "a naïve plan; naïvety") == ["naïve"]
    assert keywords(["Zürich"], "ZÜRICH und Zürichsee") == ["Zürich"]
    assert keywords(["caf"], "café") == []


def test_decomposed_text_matches_composed_keyword() -> None:
    # clean_text normalises to NFC; the keyword set normalises too, so raw NFD input still matches.
    assert keywords(["café"], "cafe\u0301 noir") == ["café"]


def test_cyrillic_greek_and_devanagari_words() -> None:
    assert keywords(["москва"], "Москва и Подмосковье, московский") == ["москва"]
    assert keywords(["αθήνα"], "ΑΘΉΝΑ, Αθηναίος") == ["αθήνα"]
    # Devanagari vowel signs are combining marks, not \w: "भारत" must not match inside "भारतीय".
    assert keywords(["भारत"], "भारतीय टीम, भारत") == ["भारत"]


def test_scripts_without_spaces_match_as_substrings() -> None:
    assert keywords(["東京"], "東京都で会議") == ["東京"]
    assert keywords(["サッカー"], "昨日のサッカー試合") == ["サッカー"]
    assert keywords(["ฟุตบอล"], "ข่าวฟุตบอลวันนี้") == ["ฟุตบอล"]
    assert keywords(["서울"], "서울에서 열린") == ["서울"]


def test_casefold_handles_sharp_s_and_turkish_i() -> None:
    assert keywords(["strasse"], "Die Straße ist lang") == ["strasse"]
    assert keywords(["Straße"], "STRASSE") == ["Straße"]
    assert keywords(["istanbul"], "İSTANBUL'da") == ["istanbul"]
    assert keywords(["İzmir"], "izmir") == ["İzmir"]
    # Dotless ı is its own letter (documented): "ılık" is not "ilik".
    assert keywords(["ilik"], "ılık") == []
    assert fold("İ") == "i"


def test_case_sensitive_is_exact() -> None:
    assert keywords(["Apple"], "apple Apple APPLE", case_sensitive=True) == ["Apple"]


def test_phrases_span_whitespace_and_typographic_apostrophes() -> None:
    assert keywords(["black friday"], "BLACK\n  Friday deals") == ["black friday"]
    assert keywords(["today's deals"], "Today\u2019s deals are here") == ["today's deals"]
    assert keywords(["black", "black friday"], "black friday, black") == ["black friday", "black"]


def test_keywords_with_symbol_edges() -> None:
    assert keywords(["c++", "$5"], "c++ and $5 but $50") == ["c++", "$5"]


def test_empty_keywords_are_ignored() -> None:
    assert keywords(["", "  "], "anything") == []



def test_an_empty_set_has_no_regex_and_finds_nothing() -> None:
    ks = KeywordSet.build([], case_sensitive=False)
    assert ks.regex is None and ks.find(ks.prepare("anything")) == []


def test_keywords_that_differ_only_in_case_or_spacing_are_one_key() -> None:
    # What the commerce detector relies on to map a match back to every rule group that owns it.
    assert normalize_keyword("Black\n  FRIDAY", case_sensitive=False) == normalize_keyword("black friday", False)
    assert normalize_keyword("today\u2019s", case_sensitive=True) == "today's"
    assert normalize_keyword("Apple", case_sensitive=True) != normalize_keyword("apple", case_sensitive=True)
    ks = KeywordSet.build(["Black Friday", "black  friday"], case_sensitive=False)
    assert ks.by_key == {"black friday": "Black Friday"}, "the first spelling is the one reported"


# --- regular expressions ----------------------------------------------------------------------------

def test_regex_case_follows_the_flag() -> None:
    assert compile_regex("Apple", case_sensitive=False, where="x").findall("apple APPLE") == ["apple", "APPLE"]
    assert compile_regex("Apple", case_sensitive=True, where="x").findall("apple APPLE") == []


def test_a_bad_regex_is_a_package_error_naming_where_it_is() -> None:
    with pytest.raises(PackageError, match=r"invalid regular expression in commerce rule group 'deals': '\[z-a\]'"):
        compile_regex("[z-a]", case_sensitive=False, where="commerce rule group 'deals'")
