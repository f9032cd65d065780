"""Shadow scoring: a candidate version of a filter scored beside the live one, and the differences reported.

``fluxscore worker --role shadow`` with ``FLUXSCORE_SHADOW_FILTERS=demo@1.1.0`` reads every raw article
(in a consumer group of its own, so the live pipeline is untouched), scores it with the live and the
shadow version of each shadowed filter, and publishes one comparison per (article, filter) on
``scores.shadow``: both scores, tiers and stages, the difference per dimension. Metrics count tier
agreement and the size of the differences. Both versions run in this process through
``Pipeline.score``; the same code and package give the live topic's record, so nothing has to be joined.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from scoring.article import Article, Limits, parse_article
from scoring.isolate import isolate
from scoring.package import resolve, search_roots
from scoring.pipeline import Pipeline
from scoring.records import ScoreRecord
from scoring.settings import ScoringSettings
from streams.agents import Inbound
from streams.app import batch_agent, build_app, faust_sender, faust_topic, register_assignment_log, run_faust
from streams.exceptions import StreamSettingsError
from streams.kafka import ensure_topics
from streams.metrics import LOADING_MODELS, WAITING_FOR_KAFKA, StreamMetrics, ready_when_started
from streams.outbox import Message, Outbox, Sender
from streams.settings import StreamSettings
from streams.topics import Topics

log = logging.getLogger("fluxscore.streams.shadow")


def _side(record: ScoreRecord) -> dict[str, Any]:
    return {"version": record.filter.version, "package_hash": record.filter.package_hash,
            "weighted_average": record.weighted_average, "tier": record.tier.value, "stage": record.stage.value}


def compare(live: Sequence[ScoreRecord], shadow: Sequence[ScoreRecord]) -> list[dict[str, Any]]:
    """One comparison per (article, filter) that both sides scored."""
    by_key = {(r.article_id, r.filter.name): r for r in live}
    out: list[dict[str, Any]] = []
    now = datetime.now(UTC).isoformat()
    for s in shadow:
        lv = by_key.get((s.article_id, s.filter.name))
        if lv is None:
            continue
        dims = {d: round(s.dimensions[d].calibrated - lv.dimensions[d].calibrated, 4)
                for d in s.dimensions.keys() & lv.dimensions.keys()}
        diff = round(s.weighted_average - lv.weighted_average, 4)
        out.append({"article_id": s.article_id, "filter": s.filter.name, "live": _side(lv), "shadow": _side(s),
                    "diff": diff, "abs_diff": abs(diff), "tier_agrees": s.tier == lv.tier,
                    "stage_agrees": s.stage == lv.stage, "dimension_diff": dims, "compared_at": now})
    return out


class ShadowRunner:
    def __init__(self, live: Pipeline, shadow: Pipeline, topics: Topics, send: Sender, metrics: StreamMetrics,
                 *, limits: Limits, retry_max_backoff: float) -> None:
        self.live, self.shadow, self.topics, self.send, self.metrics = live, shadow, topics, send, metrics
        self.limits = limits
        self.retry_max_backoff = retry_max_backoff
        self._sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # n, abs diff, tier agreements

    def _score_both(self, articles: list[Article]) -> list[dict[str, Any]]:
        return compare(self.live.score(articles), self.shadow.score(articles))

    def _compare_isolated(self, articles: list[Article]) -> list[dict[str, Any]]:
        outputs, failed = isolate(self._score_both, articles)
        for i, exc in failed:
            # The live pipeline dead-letters what it cannot score; the comparison only skips it.
            log.warning("article not compared", extra={"article_id": articles[i].id,
                                                       "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        return [c for out in outputs for c in out]

    async def handle(self, batch: Sequence[Inbound]) -> None:
        articles: list[Article] = []
        for item in batch:
            try:
                articles.append(parse_article(item.payload, limits=self.limits))
            except Exception:
                continue  # the live pipeline dead-letters it; a comparison has nothing to add
        self.metrics.messages_in.labels("shadow").inc(len(batch))
        start = time.perf_counter()
        comparisons = await asyncio.to_thread(self._compare_isolated, articles) if articles else []
        self.metrics.stage_seconds.labels("shadow").observe(time.perf_counter() - start)
        outbox = Outbox(self.send, max_backoff=self.retry_max_backoff)
        for c in comparisons:
            outbox.add(Message(self.topics.shadow.name, f"{c['article_id']}|{c['filter']}".encode(), orjson.dumps(c)))
        await outbox.flush()
        for c in comparisons:
            self.metrics.shadow_pairs.labels(c["filter"], str(c["tier_agrees"]).lower()).inc()
            self.metrics.shadow_abs_diff.labels(c["filter"]).observe(c["abs_diff"])
            sums = self._sums[c["filter"]]
            sums[0] += 1
            sums[1] += c["abs_diff"]
            sums[2] += c["tier_agrees"]
        if comparisons:
            log.info("shadow comparisons", extra={"pairs": len(comparisons), "totals": {
                name: {"pairs": int(n), "mean_abs_diff": round(d / n, 4), "tier_agreement": round(a / n, 4)}
                for name, (n, d, a) in self._sums.items()}})


def load_pipelines(settings: StreamSettings, scoring: ScoringSettings) -> tuple[Pipeline, Pipeline]:
    if not settings.shadow_filters:
        raise StreamSettingsError("the shadow role needs FLUXSCORE_SHADOW_FILTERS (e.g. demo@1.1.0)",
                                  variable="FLUXSCORE_SHADOW_FILTERS")
    roots = search_roots(scoring.filters_path)
    shadow_packages = [resolve(ref, roots) for ref in settings.shadow_filters]
    live_by_name = {resolve(ref, roots).name: ref for ref in settings.filters}
    missing = [p.name for p in shadow_packages if p.name not in live_by_name]
    if missing:
        raise StreamSettingsError(f"shadow filters {missing} have no live version in FLUXSCORE_FILTERS",
                                  variable="FLUXSCORE_SHADOW_FILTERS")
    live = Pipeline.load([live_by_name[p.name] for p in shadow_packages], settings=scoring)
    shadow = Pipeline.load(shadow_packages, settings=scoring)
    return live, shadow


def run_shadow_worker(settings: StreamSettings, scoring: ScoringSettings, topics: Topics, metrics: StreamMetrics,
                      name: str) -> int:
    """Runs the shadow role; ``metrics`` are already served (by :func:`streams.worker.run_worker`)."""
    bootstrap, _ = settings.require_cluster()
    metrics.set_phase(LOADING_MODELS)
    live, shadow = load_pipelines(settings, scoring)
    log.info("shadow filters loaded", extra={"live": live.describe(), "shadow": shadow.describe()})
    metrics.set_filters("live", live.describe())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    metrics.set_phase(WAITING_FOR_KAFKA)
    loop.run_until_complete(ensure_topics(bootstrap, [topics.raw, topics.shadow], replication=settings.replication))
    # Its own consumer group: the shadow sees every article without taking any from the live workers.
    app = build_app(settings.with_app_id(f"{settings.app_id}-shadow"))
    runner = ShadowRunner(live, shadow, topics, faust_sender(app), metrics,
                          limits=scoring.limits, retry_max_backoff=settings.retry_max_backoff)

    agent = batch_agent(runner.handle, "shadow", settings.probe_batch, settings.probe_within)
    app.agent(faust_topic(app, topics.raw, settings.replication), name="fluxscore.shadow", concurrency=1)(agent)
    register_assignment_log(app)
    ready_when_started(app, metrics)
    log.info("worker starting", extra={"roles": ["shadow"], "consumes": [topics.raw.name], "bootstrap": bootstrap,
                                       "worker": name})
    return run_faust(app, loop, settings)

