"""The input stats every record carries for drift monitoring: text length and language."""

from __future__ import annotations

import pytest

from scoring import pipeline
from scoring.article import validate_article
from scoring.pipeline import Escalation, input_stats
from scoring.records import InputStats, PrefilterResult


@pytest.mark.parametrize(("given", "expected"), [("en", "en"), ("EN-us", "en"), ("pt_BR", "pt"), (" nl ", "nl"),
                                                 ("", "unknown"), (None, "unknown"), ("??", "unknown")])
def test_the_language_is_the_articles_own_primary_subtag(given: str | None, expected: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_detector", lambda: None)
    article = validate_article({"id": "a", "title": "T", "content": "Some words.", "language": given})
    stats = input_stats(article, "T\n\nSome words.")
    assert stats == InputStats(text_chars=len("T\n\nSome words."), language=expected)


def test_a_detector_guesses_when_the_article_does_not_say(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def detect(text: str) -> str:
        seen.append(text)
        return "DE"

    monkeypatch.setattr(pipeline, "_detector", lambda: detect)
    article = validate_article({"id": "a", "content": "x" * 10_000})
    assert input_stats(article, "x" * 10_000).language == "de"
    assert len(seen[0]) == 2000, "the detector reads the start of the text only"
    assert input_stats(validate_article({"id": "b", "language": "fr"}), "").language == "fr"


def test_escalations_carry_the_stats_to_stage_two() -> None:
    stats = InputStats(text_chars=12, language="nl")
    item = Escalation(article_id="a", text="t", filter="demo", package_hash="h", stage1_raw=[1.0], stage1_estimate=5.0,
                      prefilter=PrefilterResult(passed=True), input=stats)
    assert Escalation.model_validate_json(item.model_dump_json()).input == stats
    old = item.model_dump(exclude={"input"})
    assert Escalation.model_validate(old).input is None, "escalations from before the stats still decode"
