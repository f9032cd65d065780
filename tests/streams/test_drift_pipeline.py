"""Drift of real scores: the demo package scores synthetic articles in-process (no broker), the monitor's
windows compare them with the package's reference profile, and a swap of topic or language alerts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from scoring.article import validate_article
from scoring.package import search_roots
from scoring.pipeline import Pipeline, Screened
from scoring.records import ScoreRecord
from streams.drift.report import DriftResult
from streams.drift.windows import DriftTracker, package_lookup

pytestmark = pytest.mark.integration  # real models (MiniLM encoder, demo probe and student)


class MemoryStore:
    def __init__(self) -> None:
        self.rows: dict[bytes, np.ndarray] = {}

    def get_many(self, keys: Any) -> list[np.ndarray | None]:
        return [self.rows.get(k) for k in keys]

    def put_many(self, keys: Any, embeddings: np.ndarray) -> None:
        self.rows.update(zip(keys, embeddings, strict=True))


Scored = tuple[list[ScoreRecord], dict[str, Screened]]


@pytest.fixture(scope="module")
def scored() -> dict[str, Scored]:
    from training.synth import SynthConfig, generate, strip_labels

    pipeline = Pipeline.load("demo")
    # The monitor's re-embedding reads what the probe encoded, as with FLUXSCORE_EMBEDDING_CACHE_TTL.
    pipeline.embedding_store = MemoryStore()

    def score(raw: list[dict[str, Any]]) -> Scored:
        articles = [validate_article(strip_labels(r)) for r in raw]
        records, screened = pipeline.screen(articles)
        final, escalations = pipeline.probe(screened)
        records += final + pipeline.escalate(escalations)
        order = {a.id: i for i, a in enumerate(articles)}
        return sorted(records, key=lambda r: order[r.article_id]), {s.article.id: s for s in screened}

    # Crime and sports news: what the demo filter (uplifting-style) sees little of in its calibration data.
    topics = [r for r in generate(SynthConfig(n=900, seed=63)) if r["tags"][0] in ("crime", "sports")]
    return {"same": score(generate(SynthConfig(n=150, seed=61))),
            "topic": score(topics[:100]),
            "language": score(generate(SynthConfig(n=100, seed=62, languages=("de",), language_weights=None))),
            "store": pipeline.embedding_store}  # type: ignore[dict-item]


def _tracker(store: MemoryStore) -> DriftTracker:
    from scoring.embedding import EmbeddingKey, embed, load_embedder

    def embedder(key: EmbeddingKey, texts: list[str]) -> np.ndarray:
        return embed(load_embedder(key.model, "cpu"), key, texts, 64, store)

    return DriftTracker(reference_size=500, window=100, every=50, sample_size=64,
                        lookup=package_lookup(search_roots([])), embedder=embedder)


def _feed(tracker: DriftTracker, part: Scored) -> list[DriftResult]:
    records, screened = part
    out = []
    for record in records:
        tracker.add(record)
        item = screened.get(record.article_id)
        if item is not None and record.filter.name in item.open_filters:
            tracker.add_text([record.filter.name], item.text)
        out += [tracker.run(tracker.take(name, trigger), with_snapshot=False) for name, trigger in tracker.due()]
    return out


def test_the_same_distribution_raises_no_alert_against_the_package_profile(scored: dict[str, Any]) -> None:
    results = _feed(_tracker(scored["store"]), scored["same"])
    assert len(results) == 3
    for result in results:
        summary = result.summary
        assert summary["reference"]["kind"] == "package" and summary["reference"]["embeddings"] > 100
        assert summary["status"] == "ok", summary["alerts"]
    assert results[-1].summary["embeddings"]["available"], results[-1].summary["embeddings"]


@pytest.mark.parametrize(("shift", "rules"), [("topic", {"column_drift"}),
                                              ("language", {"language_mix", "embedding_drift"})])
def test_another_topic_or_language_alerts_within_one_window(scored: dict[str, Any], shift: str,
                                                            rules: set[str]) -> None:
    tracker = _tracker(scored["store"])
    records, screened = scored["same"]
    before = _feed(tracker, (records[:100], screened))
    assert before and all(r.summary["status"] == "ok" for r in before)
    after = _feed(tracker, scored[shift])
    # The second window after the swap is the first made of shifted articles only.
    assert len(after) == 2
    fired = {a.rule for a in after[1].alerts}
    assert rules <= fired, after[1].summary["alerts"]
