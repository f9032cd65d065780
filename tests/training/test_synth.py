"""The synthetic generator: deterministic, varied, and its text carries its labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson

from scoring.article import validate_article
from training.synth import (
    _FACET_TEXT,
    FACETS,
    FILTER_DIMENSIONS,
    LANGUAGES,
    SynthConfig,
    filter_scores,
    generate,
    level,
    strip_labels,
    write_jsonl,
)


def test_same_seed_same_articles_other_seed_other_articles() -> None:
    a = generate(SynthConfig(n=60, seed=7))
    b = generate(SynthConfig(n=60, seed=7))
    c = generate(SynthConfig(n=60, seed=8))
    assert a == b
    assert [r["content"] for r in a] != [r["content"] for r in c]


def test_articles_are_valid_and_varied() -> None:
    records = generate(SynthConfig(n=400, seed=1))
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    for r in records:
        validate_article(strip_labels(r))
    assert set(Counter(r["language"] for r in records)) == set(LANGUAGES)
    topics = Counter(r["truth"]["topic"] for r in records)
    assert len(topics) >= 8 and topics["commerce"] > 10
    assert sum(r["truth"]["near_duplicate_of"] is not None for r in records) > 3


def test_labels_in_both_layouts_within_range() -> None:
    for r in generate(SynthConfig(n=100, seed=2)):
        demo = r["demo_analysis"]
        tech = r["demo_tech_analysis"]
        assert set(demo) == set(FILTER_DIMENSIONS["demo"])
        assert set(tech) == set(FILTER_DIMENSIONS["demo_tech"])
        assert all(0 <= v["score"] <= 10 and isinstance(v["evidence"], str) for v in demo.values())
        assert all(0 <= v <= 10 for v in tech.values())


def test_text_states_each_facet_at_its_level() -> None:
    records = list(generate(SynthConfig(n=80, seed=3, commerce_fraction=0.0,
                                               near_duplicate_fraction=0.0)))
    for r in records:
        for facet in FACETS:
            variants = _FACET_TEXT[r["language"]][facet][level(r["truth"]["latent"][facet])]
            if not variants:
                continue
            # Each variant's fixed opening words (before any slot) must appear in the text.
            heads = [v.split("{")[0][:25] for v in variants]
            assert any(h in r["content"] for h in heads), (facet, r["id"])


def test_commerce_items_score_low_and_look_like_commerce() -> None:
    items = [r for r in generate(SynthConfig(n=300, seed=4, commerce_fraction=0.3)) if r["truth"]["is_commerce"]]
    assert items
    for r in items:
        assert "€" in r["content"] or "SAVE" in r["content"]
        assert max(r["demo_tech_analysis"].values()) <= 3


def test_filter_scores_mix_facets() -> None:
    facets = dict.fromkeys(FACETS, 0.0) | {"evidence": 10.0, "readiness": 5.0}
    tech = filter_scores(facets, "demo_tech")
    assert tech["technical_credibility"] == 0.6 * 10 + 0.4 * 5
    assert filter_scores(facets, "demo")["evidence"] == 10.0


def test_strip_and_write(tmp_path: Path) -> None:
    records = generate(SynthConfig(n=5, seed=5))
    stripped = [strip_labels(r) for r in records]
    assert all("truth" not in r and "demo_analysis" not in r for r in stripped)
    path = tmp_path / "a.jsonl"
    assert write_jsonl(stripped, path) == 5
    assert [orjson.loads(line) for line in path.read_bytes().splitlines()] == stripped
