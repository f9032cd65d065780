"""Active-learning selection: the policy as pure functions, and the selector against a real redis-server
and a real (SQLite) label store, with a recording sender in place of Kafka and a toy embedding."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from scoring.aggregate import Tier
from scoring.article import Article
from scoring.package import FilterPackage, load_package
from scoring.pipeline import Screened
from scoring.records import DimensionScore, FilterRef, PrefilterResult, ScoreRecord, StageUsed
from streams.agents import Inbound
from streams.dlq import Source
from streams.metrics import StreamMetrics
from streams.selector import (
    Selector,
    SelectorState,
    boundary,
    is_candidate,
    priority,
    select,
    uncertainty,
)
from streams.settings import StreamSettings
from streams.topics import Topics
from streams.wire import encode_screened
from tests.integration.conftest import redis_url
from tests.streams.conftest import Sent
from training.labels import Label, LabelStore, QueueItem

_n = itertools.count()


def _package(tmp_path: Path, **active_learning: Any) -> FilterPackage:
    pkg = tmp_path / "pkg" / "toy" / "1.0.0"
    pkg.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "toy", "version": "1.0.0",
        "dimensions": [{"name": "alpha", "weight": 0.5, "description": "how alpha"},
                       {"name": "beta", "weight": 0.5, "description": "how beta"}],
        "tiers": {"high": 7.0, "medium": 4.0},
        "stage1": {"embedding_model": "unused", "probe": "probe.safetensors", "probe_meta": "probe.json",
                   "threshold": 3.0},
        "oracle_prompt": "prompt.md",
        "active_learning": active_learning,
    }
    (pkg / "filter.yaml").write_text(yaml.safe_dump(config))
    (pkg / "prompt.md").write_text("Rate alpha and beta.")
    return load_package(pkg)


def _record(article: str, wa: float, *, estimate: float | None = None, stage: StageUsed = StageUsed.STAGE2,
            tier: Tier | None = None) -> ScoreRecord:
    tier = tier or (Tier.HIGH if wa >= 7 else Tier.MEDIUM if wa >= 4 else Tier.LOW)
    return ScoreRecord(article_id=article, filter=FilterRef(name="toy", version="1.0.0", package_hash="h1"),
                       model_hashes={}, stage=stage, stage1_estimate=estimate, weighted_average=wa, tier=tier,
                       dimensions={"alpha": DimensionScore(raw=wa, calibrated=wa),
                                   "beta": DimensionScore(raw=wa, calibrated=wa)},
                       prefilter=PrefilterResult(passed=True))


def _toy_embedding(package: FilterPackage, texts: list[str]) -> np.ndarray:
    """A bag of hashed words: the same text is the same vector, unrelated texts are nearly orthogonal."""
    out = np.zeros((len(texts), 256), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, hashlib.sha256(word.encode()).digest()[0]] += 1.0
    return out


# -- the policy, pure ------------------------------------------------------------------------------


def test_candidates_are_high_or_at_the_bar_and_never_blocked(tmp_path: Path) -> None:
    config = _package(tmp_path, bar=5.5).config
    assert is_candidate(_record("a", 5.5), config)
    assert not is_candidate(_record("a", 5.49), config)
    assert is_candidate(_record("a", 3.0, tier=Tier.HIGH), config), "a HIGH tier counts whatever the average"
    assert not is_candidate(_record("a", 9.0, stage=StageUsed.PREFILTER), config)
    assert not is_candidate(_record("a", 9.0, stage=StageUsed.COMMERCE), config)
    assert is_candidate(_record("a", 6.0, stage=StageUsed.STAGE1), config)


def test_priority_parts() -> None:
    assert uncertainty(_record("a", 6.0, estimate=3.5)) == pytest.approx(0.5)
    assert uncertainty(_record("a", 6.0, estimate=0.0)) == 1.0, "capped"
    assert uncertainty(_record("a", 6.0, estimate=6.0, stage=StageUsed.STAGE1)) == 0.0, "only the probe ran"
    assert boundary(7.0, 7.0) == 1.0
    assert boundary(5.5, 7.0) == pytest.approx(0.5)
    assert boundary(2.0, 7.0) == 0.0
    p = priority(0.5, 0.5, 1.0)
    assert p.score == pytest.approx(0.4 * 0.5 + 0.3 * 0.5 + 0.3)
    assert (p.uncertainty, p.boundary, p.novelty) == (0.5, 0.5, 1.0)


def test_select_takes_the_best_first_then_the_most_different() -> None:
    e = np.eye(4, dtype=np.float32)
    # 0 and 1 are close (similarity 0.8 < 0.95); 2 is far from both; 3 is a copy of 0.
    emb = np.stack([e[0], 0.8 * e[0] + 0.6 * e[1], e[2], e[0]])
    parts = [(1.0, 1.0), (1.0, 0.9), (0.0, 0.5), (0.0, 0.0)]
    sel = select(parts, emb, np.zeros((0, 4)), near_duplicate=0.95)
    order = [i for i, _ in sel.chosen]
    assert order[0] == 0, "the best combined priority comes first"
    assert order[1] == 1 and sel.chosen[1][1].novelty == pytest.approx(0.2, abs=1e-5), \
        "novelty is measured against what was taken before"
    assert sel.near_duplicates == [(3, 1.0)], "a copy of a taken item is skipped"
    assert order == [0, 1, 2]


def test_select_measures_novelty_against_the_bank_and_skips_its_near_duplicates() -> None:
    e = np.eye(3, dtype=np.float32)
    bank = np.stack([e[0]])
    sel = select([(0.5, 0.5), (0.5, 0.5)], np.stack([e[0], e[1]]), bank, near_duplicate=0.95)
    assert [i for i, _ in sel.chosen] == [1]
    assert sel.chosen[0][1].novelty == 1.0
    assert sel.near_duplicates == [(0, 1.0)]
    # A diverse candidate outranks a more uncertain one that is close to the bank.
    close = 0.9 * e[0] + np.sqrt(1 - 0.81) * e[1]
    sel = select([(0.6, 0.5), (0.4, 0.5)], np.stack([close, e[2]]), bank, near_duplicate=0.95)
    assert [i for i, _ in sel.chosen] == [1, 0]


# -- the selector against Redis and the label store ---------------------------------------------------


def _sink() -> tuple[Sent, Any]:
    sent: Sent = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None) -> Any:
        sent.append((topic, key, value, list(headers or [])))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return sent, send


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _selector(tmp_path: Path, redis_server: Any, *, store: LabelStore | None = None, state: SelectorState | None = None,
              clock: Callable[[], float] | None = None, **active_learning: Any) -> tuple[Selector, Sent]:
    package = _package(tmp_path, **active_learning)
    state = state or SelectorState.from_url(redis_url(redis_server), prefix=f"test-selector-{next(_n)}",
                                            max_waiting=100, diversity_window=100)
    sent, send = _sink()
    topics = Topics.from_settings(StreamSettings.from_env({}))
    selector = Selector({"toy": package}, state, store or LabelStore(tmp_path / "labels.db"), topics, send,
                        StreamMetrics(), _toy_embedding, clock=clock or Clock())
    return selector, sent


def _screened(article: str, text: str) -> Inbound:
    s = Screened(article=Article(id=article, title=f"Title {article}", url=f"https://x.test/{article}",
                                 language="en"),
                 text=text, open_filters={"toy": PrefilterResult(passed=True)})
    return Inbound(encode_screened(s), Source("articles.screened", 0, next(_n)))


def _scores(*records: ScoreRecord) -> list[Inbound]:
    return [Inbound(r.to_json(), Source("scores.all", 0, next(_n))) for r in records]


def _items(sent: Sent) -> list[QueueItem]:
    return [QueueItem.from_json(v) for t, _, v, _ in sent if t == "active-learning.toy"]


class Crash(BaseException):
    """A kill -9 in the middle of a batch: nothing after it runs."""


TEXTS = {f"a{i}": f"story {i} " + " ".join(f"w{i}x{j}" for j in range(12)) for i in range(8)}


@pytest.mark.integration
def test_a_candidate_is_queued_with_its_text_once_whatever_arrives_first(tmp_path: Path, redis_server) -> None:
    async def run() -> tuple[Sent, Selector]:
        selector, sent = _selector(tmp_path, redis_server)
        # a0: the article first, then its record. a1: the record first; it waits in Redis for the article.
        await selector.handle_screened([_screened("a0", TEXTS["a0"])])
        await selector.handle_scores(_scores(_record("a0", 6.5, estimate=4.0), _record("a1", 7.5, estimate=7.0),
                                             _record("a2", 3.0, estimate=2.0)))
        assert len(_items(sent)) == 1 and await selector.state.waiting() == 1
        await selector.handle_screened([_screened("a1", TEXTS["a1"]), _screened("a2", TEXTS["a2"])])
        assert await selector.state.waiting() == 0, "a handled record no longer waits"
        # Redelivery of everything: nothing is queued twice.
        await selector.handle_scores(_scores(_record("a0", 6.5, estimate=4.0), _record("a1", 7.5, estimate=7.0)))
        await selector.handle_screened([_screened("a1", TEXTS["a1"])])
        return sent, selector

    sent, selector = asyncio.run(run())
    items = _items(sent)
    assert [i.article_id for i in items] == ["a0", "a1"], "a2 is below the bar"
    a0 = items[0]
    assert a0.text == TEXTS["a0"] and a0.title == "Title a0" and a0.url == "https://x.test/a0" and a0.language == "en"
    assert a0.priority.uncertainty == pytest.approx(0.5) and a0.priority.boundary == pytest.approx(1 - 0.5 / 3)
    assert a0.priority.novelty == 1.0
    assert a0.record_key == _record("a0", 6.5).key and a0.dimensions == {"alpha": 6.5, "beta": 6.5}
    _, key, _, headers = next(m for m in sent if m[0] == "active-learning.toy")
    assert key == b"a0" and dict(headers)["fluxscore.filter"] == b"toy"
    assert selector.counts[("toy", "duplicate")] == 2 and selector.counts[("toy", "queued")] == 2


@pytest.mark.integration
def test_an_item_claimed_but_never_acknowledged_is_sent_again_unchanged(tmp_path: Path, redis_server) -> None:
    async def run() -> tuple[Sent, Sent]:
        first, sent1 = _selector(tmp_path, redis_server)
        await first.handle_screened([_screened("a0", TEXTS["a0"])])

        async def crash(topic: str, key: bytes | None, value: bytes, headers: Any) -> Any:
            sent1.append((topic, key, value, list(headers or [])))
            raise Crash  # the process dies while Kafka has the message but before it is marked sent

        first.send = crash
        with pytest.raises(Crash):
            await first.handle_scores(_scores(_record("a0", 6.5, estimate=4.0)))
        again, sent2 = _selector(tmp_path, redis_server, state=first.state)
        await again.handle_scores(_scores(_record("a0", 6.5, estimate=4.0)))
        await again.handle_scores(_scores(_record("a0", 6.5, estimate=4.0)))
        return sent1, sent2

    sent1, sent2 = asyncio.run(run())
    assert len(sent1) == 1 and len(sent2) == 1
    assert sent1[0][2] == sent2[0][2], "the redelivery re-emits the stored item, byte for byte"


@pytest.mark.integration
def test_labelled_ids_and_near_duplicates_are_skipped(tmp_path: Path, redis_server) -> None:
    store = LabelStore(tmp_path / "labels.db")
    store.add(Label(article_id="a0", filter="toy", source="human", annotator="ann", scores={"alpha": 5, "beta": 5}))

    async def run() -> tuple[Sent, Selector]:
        selector, sent = _selector(tmp_path, redis_server, store=store)
        await selector.handle_screened([_screened("a0", TEXTS["a0"]), _screened("a1", TEXTS["a1"]),
                                        _screened("copy", TEXTS["a1"]), _screened("later", TEXTS["a1"] + " ok")])
        await selector.handle_scores(_scores(_record("a0", 8.0), _record("a1", 6.0), _record("copy", 6.5)))
        # A later batch: its near-duplicate is found in the bank of queued embeddings.
        await selector.handle_scores(_scores(_record("later", 6.0)))
        return sent, selector

    sent, selector = asyncio.run(run())
    assert [i.article_id for i in _items(sent)] == ["copy"], "the better copy is taken, the other one skipped"
    assert selector.counts[("toy", "labelled")] == 1
    assert selector.counts[("toy", "near_duplicate")] == 2


@pytest.mark.integration
def test_the_daily_budget_takes_the_best_first_and_refills(tmp_path: Path, redis_server) -> None:
    clock = Clock()

    async def run() -> tuple[Sent, Selector]:
        selector, sent = _selector(tmp_path, redis_server, clock=clock, daily_budget=2)
        await selector.handle_screened([_screened(a, t) for a, t in TEXTS.items()])
        # a2 disagrees most, a1 next; a0 agrees: a0 is over the budget.
        await selector.handle_scores(_scores(_record("a0", 6.0, estimate=6.0), _record("a1", 6.0, estimate=4.0),
                                             _record("a2", 6.0, estimate=1.0)))
        await selector.handle_scores(_scores(_record("a0", 6.0, estimate=6.0)))
        clock.now += 12 * 3600  # half a day: one token back
        await selector.handle_scores(_scores(_record("a0", 6.0, estimate=6.0), _record("a3", 6.0, estimate=5.0)))
        return sent, selector

    sent, selector = asyncio.run(run())
    items = _items(sent)
    assert [i.article_id for i in items] == ["a2", "a1", "a3"]
    assert items[0].priority.score > items[1].priority.score
    assert selector.counts[("toy", "over_budget")] == 3


@pytest.mark.integration
def test_waiting_records_are_bounded(tmp_path: Path, redis_server) -> None:
    async def run() -> tuple[Sent, Selector]:
        state = SelectorState.from_url(redis_url(redis_server), prefix=f"test-selector-{next(_n)}", max_waiting=2)
        clock = Clock()
        selector, sent = _selector(tmp_path, redis_server, state=state, clock=clock)
        for article in ("a0", "a1", "a2"):
            clock.now += 1
            await selector.handle_scores(_scores(_record(article, 6.0)))
        assert await state.waiting() == 2
        await selector.handle_screened([_screened(a, TEXTS[a]) for a in ("a0", "a1", "a2")])
        return sent, selector

    sent, selector = asyncio.run(run())
    assert [i.article_id for i in _items(sent)] == ["a1", "a2"], "the oldest waiting record was dropped"
    assert selector.counts[("toy", "dropped_waiting")] == 1


def test_the_roles_run_alone_and_their_topics_follow_the_settings() -> None:
    from streams.exceptions import StreamSettingsError

    assert StreamSettings.from_env({"FLUXSCORE_ROLES": "selector"}).roles == ("selector",)
    assert StreamSettings.from_env({"FLUXSCORE_ROLES": "oracle"}).roles == ("oracle",)
    with pytest.raises(StreamSettingsError, match="runs alone"):
        StreamSettings.from_env({"FLUXSCORE_ROLES": "selector,probe"})
    t = Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_PREFIX": "prod.", "FLUXSCORE_PARTITIONS": "6",
                                                      "FLUXSCORE_TOPIC_LABELS": "oracle.labels"}))
    assert (t.active_learning("demo").name, t.labels("demo").name) == ("prod.active-learning.demo",
                                                                        "prod.oracle.labels.demo")
    assert t.active_learning("demo").partitions == 6
    with pytest.raises(StreamSettingsError, match="same base name"):
        Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_LABELS": "scores"}))
