"""``fluxscore replay`` against the real broker and Redis: ranges, pinned versions, idempotency, separate topics."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import typer
import yaml
from typer.testing import CliRunner

from scoring.package import load_package, resolve
from scoring.records import RecordKey, ScoreRecord
from scoring.settings import ScoringSettings
from streams.cli import register
from streams.kafka import ensure_topics, make_consumer, make_producer, produce_file
from streams.replay import ReplayError, ReplaySummary, parse_offsets, parse_since, replay
from streams.settings import StreamSettings
from streams.topics import Topics, TopicSpec
from streams.wire import record_key_of
from tests.integration.conftest import redis_url, synthetic_articles
from training.export import write_manifest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
_n = itertools.count()


def test_since_takes_durations_and_iso_times() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
    assert parse_since("36h", now) == datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
    assert parse_since("2026-11-20T08:00:00Z") == datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    with pytest.raises(ReplayError, match="neither a duration"):
        parse_since("last week")


def test_offsets_are_partition_colon_offset() -> None:
    assert parse_offsets("0:120,1:98") == {0: 120, 1: 98}
    for bad in ("0", "a:1", "0:1,0:2", ""):
        with pytest.raises(ReplayError):
            parse_offsets(bad)


def test_the_command_is_registered_and_refuses_a_bad_range_in_one_line() -> None:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["replay", "--filters", "demo@1.0.0", "--since", "last week"])
    assert result.exit_code == 2
    assert "neither a duration" in result.output


class Env:
    """One test's topics and Redis keys on the session's broker and Redis."""

    def __init__(self, broker, redis_server, root: Path | None = None) -> None:
        n = next(_n)
        self.settings = StreamSettings.from_env({
            "FLUXSCORE_KAFKA_BOOTSTRAP": broker.bootstrap, "FLUXSCORE_REDIS_URL": redis_url(redis_server),
            "FLUXSCORE_TOPIC_PREFIX": f"replay{n}.", "FLUXSCORE_REDIS_PREFIX": f"replay-{n}",
            "FLUXSCORE_PARTITIONS": "2", "FLUXSCORE_PRODUCER_MAX_BATCH_BYTES": "1"})
        self.scoring = ScoringSettings.from_env({"FLUXSCORE_DEVICE": "cpu",
                                                 **({"FLUXSCORE_FILTERS_PATH": str(root)} if root else {})})
        self.topics = Topics.from_settings(self.settings)
        self.bootstrap = broker.bootstrap

    def replay(self, filters: str, **kwargs: object) -> ReplaySummary:
        return asyncio.run(replay(filters, self.settings, self.scoring, **kwargs))  # type: ignore[arg-type]

    def read(self, topic: str, wait: float = 2.0) -> list[tuple[bytes, bytes, dict[str, bytes]]]:
        """(record key, body, headers) of every message on ``topic``."""
        async def run() -> list[tuple[bytes, bytes, dict[str, bytes]]]:
            await ensure_topics(self.bootstrap, [TopicSpec(topic, 2)])
            consumer = make_consumer(self.bootstrap, topic)
            await consumer.start()
            got: list[tuple[bytes, bytes, dict[str, bytes]]] = []
            quiet = time.monotonic() + wait
            try:
                while time.monotonic() < quiet:
                    for messages in (await consumer.getmany(timeout_ms=300)).values():
                        if messages:
                            quiet = time.monotonic() + wait
                        got += [(record_key_of(m.key, m.headers) or b"", m.value or b"", dict(m.headers or []))
                                for m in messages]
            finally:
                await consumer.stop()
            return got

        return asyncio.run(run())


def _new_version(root: Path) -> str:
    """Publish demo 1.0.1 under ``root``: the same models, a stricter MEDIUM tier (a new package hash)."""
    old = resolve("demo")
    new_dir = root / "demo" / "1.0.1"
    shutil.copytree(old.path, new_dir)
    config = yaml.safe_load((new_dir / "filter.yaml").read_text())
    config["version"] = "1.0.1"
    config["tiers"]["medium"] = float(config["tiers"]["medium"]) + 0.5
    (new_dir / "filter.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_manifest(new_dir)
    return load_package(new_dir).package_hash


def test_a_new_version_rescores_the_raw_topic_superseding_the_old_records_and_a_second_replay_publishes_nothing(
        broker, redis_server, tmp_path: Path) -> None:
    root = tmp_path / "filters"
    new_hash = _new_version(root)
    env = Env(broker, redis_server, root)
    articles = synthetic_articles(8, seed=51)
    (tmp_path / "raw.jsonl").write_bytes(b"\n".join(articles) + b"\n")
    asyncio.run(produce_file(tmp_path / "raw.jsonl", env.bootstrap, env.topics.raw.name, partitions=2,
                             max_batch_bytes=1))

    # What the live workers published with 1.0.0 (the same stages, the same dedupe store).
    live = env.replay("demo@1.0.0")
    assert live.articles == len(articles) and live.records == len(articles) and live.skipped == 0
    before = {RecordKey.parse(k): v for k, v, _ in env.read(env.topics.all_scores.name)}
    assert len(before) == len(articles)

    first = env.replay("demo@1.0.1")
    assert first.articles == len(articles) and first.records == len(articles) and first.skipped == 0
    assert first.filters == {"demo": f"1.0.1#{new_hash}"}
    messages = env.read(env.topics.all_scores.name)
    after = {RecordKey.parse(k): ScoreRecord.from_json(v) for k, v, _ in messages if RecordKey.parse(k) not in before}
    assert len(after) == len(articles) and {k.package_hash for k in after} == {new_hash}
    old_by_article = {k.article_id: k for k in before}
    for key, record in after.items():
        assert record.filter.version == "1.0.1"
        assert record.supersedes == old_by_article[key.article_id].format(), "names the live version's record"
    assert len(env.read(env.topics.scores("demo").name)) == 2 * len(articles)

    again = env.replay("demo@1.0.1")
    assert again.articles == len(articles) and again.records == 0 and again.skipped == len(articles)
    assert len(env.read(env.topics.all_scores.name)) == len(messages), "a second replay publishes nothing"


def test_since_and_from_offsets_select_the_range(broker, redis_server) -> None:
    env = Env(broker, redis_server)
    articles = [orjson.loads(a) for a in synthetic_articles(6, seed=52)]
    t0 = int(time.time() * 1000) - 60_000

    async def publish() -> None:
        await ensure_topics(env.bootstrap, [env.topics.raw])
        producer = make_producer(env.bootstrap, max_batch_bytes=1)
        await producer.start()
        try:
            for i, article in enumerate(articles):  # partition i % 2, one second apart
                await (await producer.send(env.topics.raw.name, orjson.dumps(article), key=article["id"].encode(),
                                           partition=i % 2, timestamp_ms=t0 + i * 1000))
        finally:
            await producer.stop()

    asyncio.run(publish())
    since = datetime.fromtimestamp((t0 + 2500) / 1000, UTC)
    recent = env.replay("demo_tech@1.0.0", since=since)
    assert recent.articles == 3, "the messages at or after the time: articles 3, 4, 5"
    published = {ScoreRecord.from_json(v).article_id for _, v, _ in env.read(env.topics.all_scores.name)}
    assert published == {a["id"] for a in articles[3:]}

    picked = env.replay("demo_tech@1.0.0", offsets={0: 1})
    assert picked.articles == 2 and picked.ranges == {0: (1, 3)}, "partition 0 from offset 1: articles 2 and 4"
    published = {ScoreRecord.from_json(v).article_id for _, v, _ in env.read(env.topics.all_scores.name)}
    assert published == {a["id"] for a in articles[2:]}, "article 4 was published already: skipped, not twice"
    assert picked.skipped == 1 and picked.records == 1
    with pytest.raises(ReplayError, match="partition"):
        env.replay("demo_tech@1.0.0", offsets={7: 0})


def test_a_file_onto_a_separate_topic_keeps_its_own_idempotency(broker, redis_server, tmp_path: Path) -> None:
    env = Env(broker, redis_server)
    articles = synthetic_articles(5, seed=53)
    source = tmp_path / "articles.jsonl"
    source.write_bytes(b"\n".join([*articles, b'{"id": "bad", "title": 3}']) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    out = "scores.backfill"

    first = env.replay("demo_tech@1.0.0", file=source, topic=out, rejects=rejects)
    assert first.articles == 6 and first.records == len(articles) and len(first.dead) == 1
    assert first.published.keys() == {env.settings.topic_prefix + out}
    (letter,) = first.dead
    assert letter.article_id == "bad" and letter.stage == "prefilter"
    assert orjson.loads(rejects.read_bytes().splitlines()[0])["article_id"] == "bad"
    backfill = env.read(env.settings.topic_prefix + out)
    assert len(backfill) == len(articles), "one message per record on the separate topic"
    assert all(h["fluxscore.record_key"] == k for k, _, h in backfill)
    assert env.read(env.topics.all_scores.name, wait=1.0) == [], "the live score topics got nothing"
    assert env.read(env.topics.dlq.name, wait=0.5) == [], "nor the live DLQ"

    assert env.replay("demo_tech@1.0.0", file=source, topic=out).records == 0
    # The separate topic's entries are its own: the live topics are still to be published.
    live = env.replay("demo_tech@1.0.0", file=source)
    assert live.records == len(articles) and live.skipped == 0
    assert {k for k, _, _ in env.read(env.topics.all_scores.name)} == {k for k, _, _ in backfill}
    with pytest.raises(ReplayError, match="read whole"):
        env.replay("demo_tech@1.0.0", file=source, offsets={0: 0})
