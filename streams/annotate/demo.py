"""A demo queue for ``fluxscore annotate serve --demo`` (``make annotate``) when no broker is at hand.

The bundled sample articles are scored in-process by the demo filters, and the ones the models scored
are queued as :class:`~training.labels.QueueItem` with a simple priority (closeness to the HIGH
boundary, and probe vs student disagreement). The active-learning selector that feeds the real queue
on Kafka ranks items its own way; this only gives a person something real to label offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from scoring.article import parse_article
from scoring.records import StageUsed
from scoring.text import article_text
from training.labels import Priority, QueueItem

SAMPLE = Path(__file__).resolve().parents[2] / "scoring" / "data" / "sample_articles.jsonl"


def demo_items(filters: Sequence[str], *, limit: int = 24, sample: Path = SAMPLE) -> list[QueueItem]:
    """Queue items for the first ``limit`` sample articles the ``filters`` score (blocked ones left out)."""
    from scoring.pipeline import Pipeline

    articles = [parse_article(line) for line in sample.read_bytes().splitlines()[:limit] if line.strip()]
    pipeline = Pipeline.load(list(filters))
    by_id = {a.id: a for a in articles}
    now = datetime.now(UTC)
    items = []
    for record in pipeline.score(articles):
        if record.stage in (StageUsed.PREFILTER, StageUsed.COMMERCE) or not record.dimensions:
            continue
        article = by_id[record.article_id]
        high = pipeline.filters[record.filter.name].package.config.tiers.high
        boundary = max(0.0, 1.0 - abs(record.weighted_average - high) / 5.0)
        estimate = record.stage1_estimate
        uncertainty = min(1.0, abs(estimate - record.weighted_average) / 5.0) if estimate is not None else 0.0
        items.append(QueueItem(
            article_id=record.article_id, filter=record.filter.name, version=record.filter.version,
            package_hash=record.filter.package_hash, title=article.title, text=article_text(article),
            url=article.url, language=article.language, weighted_average=record.weighted_average,
            tier=str(record.tier), stage=str(record.stage),
            dimensions={d: s.calibrated for d, s in record.dimensions.items()},
            priority=Priority(score=round(0.5 * boundary + 0.5 * uncertainty, 4), uncertainty=round(uncertainty, 4),
                              boundary=round(boundary, 4)),
            record_key=record.key, queued_at=now))
    return items
