from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scoring.article import Article
from scoring.exceptions import PackageError
from scoring.package import ExclusionCategory, PrefilterRules
from scoring.prefilter import Prefilter, normalize_domain, url_host
from scoring.text import article_text

LONG_NEWS = ("The city council met on Tuesday to discuss next year's budget for schools and roads. "
             "Members debated the cost of repairs and the timeline for new classrooms. ") * 6


def article(content: str = LONG_NEWS, title: str = "Council debates budget", **kw: Any) -> Article:
    return Article(id=kw.pop("id", "a1"), title=title, content=content, **kw)


def run(rules: dict[str, Any], art: Article) -> tuple[bool, str | None]:
    result = Prefilter(PrefilterRules.model_validate(rules)).check(art, article_text(art))
    return result.passed, result.reason


# --- order and the simple checks -------------------------------------------------------------------

def test_default_rules_pass_everything() -> None:
    assert run({}, article(content="", title="")) == (True, None)


def test_excluded_source_type_is_case_insensitive_and_first() -> None:
    rules = {"excluded_source_types": ["Podcast"], "blocked_domains": ["example.com"], "min_length": 10_000}
    art = article(source_type="podcast", url="https://example.com/x")
    assert run(rules, art) == (False, "excluded_source_type:podcast")


def test_blocked_domain_matches_subdomains_not_lookalikes() -> None:
    rules = {"blocked_domains": ["Example.com", "https://shop.test/path", "*.ads.org"]}
    assert run(rules, article(url="https://news.EXAMPLE.com:8080/a?b=1")) == (
        False, "blocked_domain:example.com")
    assert run(rules, article(url="http://shop.test/")) == (False, "blocked_domain:shop.test")
    assert run(rules, article(url="https://x.ads.org./y")) == (False, "blocked_domain:ads.org")
    assert run(rules, article(url="https://notexample.com/a"))[0] is True
    assert run(rules, article(url="https://example.com.evil.net/a"))[0] is True
    assert run(rules, article(url=None))[0] is True
    assert run(rules, article(url="example.com/no-scheme"))[1] == "blocked_domain:example.com"


def test_idna_domains_match_both_spellings() -> None:
    assert normalize_domain("bücher.de") == "xn--bcher-kva.de"
    assert url_host("https://www.BÜCHER.de/x") == "www.xn--bcher-kva.de"
    assert run({"blocked_domains": ["bücher.de"]}, article(url="https://www.xn--bcher-kva.de/"))[0] is False
    assert url_host("http://[bad") is None


def test_too_short_reason_has_numbers() -> None:
    art = article(title="Hi", content="short")
    text = article_text(art)
    assert run({"min_length": 200}, art) == (False, f"too_short:{len(text)}<200")
    assert run({"min_length": len(text)}, art) == (True, None)


def test_domain_checked_before_length() -> None:
    rules = {"blocked_domains": ["example.com"], "min_length": 10_000}
    assert run(rules, article(url="https://example.com"))[1] == "blocked_domain:example.com"


# --- exclusion categories ----------------------------------------------------------------------------

SPORTS = {"name": "sports", "keywords": ["football", "match", "Champions League"], "min_hits": 2}


def test_exclusion_reason_names_category_and_keywords() -> None:
    art = article(content="The football match ended late. Another football fan cheered.")
    assert run({"exclusions": [SPORTS]}, art) == (False, "excluded:sports(keywords=football,match)")


def test_min_hits_counts_occurrences() -> None:
    assert run({"exclusions": [SPORTS]}, article(content="A football story."))[0] is True
    assert run({"exclusions": [SPORTS]}, article(content="Football, football."))[0] is False


def test_patterns_count_with_keywords_and_appear_in_reason() -> None:
    cat = {"name": "scores", "patterns": [r"\b\d+-\d+\b"], "keywords": ["goal"], "min_hits": 2}
    passed, reason = run({"exclusions": [cat]}, article(content="A 2-1 win after a late goal."))
    assert not passed
    assert reason == "excluded:scores(keywords=goal;patterns=2-1)"


def test_override_lifts_block() -> None:
    cat = {**SPORTS, "overrides": [r"\bstadium\s+financ\w+"]}
    art = article(content="Football match crowds fell as stadium financing collapsed.")
    assert run({"exclusions": [SPORTS]}, art)[0] is False
    assert run({"exclusions": [cat]}, art) == (True, None)


def test_min_positive_lifts_block() -> None:
    cat = {**SPORTS, "min_positive": 2}
    rules = {"exclusions": [cat], "positive_patterns": [r"\bcommunity\b", r"\bvolunteer\w*"]}
    one = article(content="Football match for the community.")
    two = article(content="Football match: volunteers rebuilt the community pitch.")
    assert run(rules, one)[0] is False
    assert run(rules, two) == (True, None)


def test_first_blocking_category_wins_and_later_ones_still_checked() -> None:
    rules = {"exclusions": [{"name": "a", "keywords": ["zebra"]}, {"name": "b", "keywords": ["lion"]}]}
    assert run(rules, article(content="A lion."))[1] == "excluded:b(keywords=lion)"


def _unvalidated(**fields: Any) -> PrefilterRules:
    # The schema rejects bad regexes at load; Prefilter must still fail clearly on rules built in code.
    cats = [ExclusionCategory.model_construct(**{"min_hits": 1, "keywords": [], "patterns": [],
                                                 "overrides": [], "min_positive": None, **c})
            for c in fields.pop("exclusions", [])]
    base = PrefilterRules().model_dump()
    base.update(fields, exclusions=cats)
    return PrefilterRules.model_construct(**base)


def test_schema_rejects_invalid_regex() -> None:
    with pytest.raises(ValidationError, match="unclosed"):
        PrefilterRules.model_validate({"exclusions": [{"name": "sports", "patterns": ["(unclosed"]}]})


def test_invalid_regex_names_category_and_pattern() -> None:
    with pytest.raises(PackageError, match=r"sports.*\(unclosed") as info:
        Prefilter(_unvalidated(exclusions=[{"name": "sports", "patterns": ["(unclosed"]}]),
                  filter_ref="demo@1")
    assert info.value.context["filter"] == "demo@1"
    with pytest.raises(PackageError, match="positive_patterns"):
        Prefilter(_unvalidated(positive_patterns=["[z-a]"]))
    with pytest.raises(PackageError, match="'x' overrides"):
        Prefilter(_unvalidated(exclusions=[{"name": "x", "keywords": ["a"], "overrides": ["*"]}]))


def test_reason_lists_are_capped() -> None:
    words = [f"w{i}" for i in range(10)]
    passed, reason = run({"exclusions": [{"name": "many", "keywords": words}]},
                         article(content=" ".join(words)))
    assert not passed
    assert reason == "excluded:many(keywords=w0,w1,w2,w3,w4,+5)"


# --- case (the keyword rules themselves are tests/scoring/test_textmatch.py) --------------------------

def test_case_sensitive_patterns_are_exact() -> None:
    rules = {"case_sensitive": True, "exclusions": [{"name": "fruit", "patterns": ["Apple"]}]}
    assert run(rules, article(content="an apple a day"))[0] is True
    assert run({**rules, "case_sensitive": False}, article(content="an apple a day"))[0] is False


# --- properties and performance ------------------------------------------------------------------

RULES = PrefilterRules.model_validate({
    "min_length": 20,
    "blocked_domains": ["example.com"],
    "excluded_source_types": ["podcast"],
    "exclusions": [
        {"name": "sports", "keywords": ["football", "match", "café", "東京"], "patterns": [r"\d+-\d+"],
         "min_hits": 1},
        {"name": "crime", "keywords": ["murder", "robbery"], "min_hits": 1, "min_positive": 1},
    ],
    "positive_patterns": [r"\bcommunity\b"],
})
PREFILTER = Prefilter(RULES)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title=st.text(max_size=60), content=st.text(max_size=400), url=st.none() | st.text(max_size=40),
       source_type=st.none() | st.text(max_size=10))
def test_check_never_raises(title: str, content: str, url: str | None, source_type: str | None) -> None:
    art = Article(id="p", title=title, content=content, url=url, source_type=source_type)
    result = PREFILTER.check(art, article_text(art))
    assert result.passed or result.reason


@settings(max_examples=100, deadline=None)
@given(content=st.lists(st.sampled_from(["a", "b", " ", "1-2", "football", "match", "community"]),
                        max_size=60).map(" ".join),
       override=st.sampled_from([r"a", r"football", r"\d", r"zzz", r"community"]))
def test_adding_an_override_never_turns_pass_into_block(content: str, override: str) -> None:
    category: dict[str, Any] = {"name": "s", "keywords": ["football", "match"], "min_hits": 2}
    base = {"exclusions": [category]}
    with_override = {"exclusions": [{**category, "overrides": [override]}]}
    art = article(content=content, title="")
    before, after = run(base, art)[0], run(with_override, art)[0]
    assert after or not before
