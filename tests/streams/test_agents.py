"""Stage handlers with the real pipeline, real Redis and the real broker (no Faust in between)."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.article import Limits, parse_article
from scoring.pipeline import Escalation, Pipeline, Screened
from scoring.records import PrefilterResult, RecordKey, ScoreRecord, text_hash
from scoring.settings import ScoringSettings
from streams.agents import Inbound, StageRunner
from streams.dedupe import DedupeStore
from streams.dlq import DeadLetterRecord, Source
from streams.kafka import aiokafka_sender, ensure_topics, make_consumer, make_producer
from streams.metrics import StreamMetrics
from streams.settings import StreamSettings
from streams.topics import Topics
from streams.wire import decode_screened, encode, encode_screened, record_key_of
from tests.hostile import DEEPEST, hostile_record, nest, valid_record
from tests.integration.conftest import STREAM_FILTERS, redis_url, synthetic_articles
from tests.streams.conftest import Sent

pytestmark = pytest.mark.integration
_n = itertools.count()


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline.load(list(STREAM_FILTERS), settings=ScoringSettings.from_env({"FLUXSCORE_DEVICE": "cpu"}))


def _inbound(payloads: list[bytes], topic: str) -> list[Inbound]:
    return [Inbound(p, Source(topic, 0, i, None)) for i, p in enumerate(payloads)]


class Harness:
    """A StageRunner wired to a fresh topic prefix and Redis prefix; reads back what it produced."""

    def __init__(self, pipeline: Pipeline, bootstrap: str, redis: str) -> None:
        n = next(_n)
        self.topics = Topics.from_settings(StreamSettings.from_env({"FLUXSCORE_TOPIC_PREFIX": f"agents{n}."}))
        self.pipeline, self.bootstrap, self.redis, self.n = pipeline, bootstrap, redis, n

    async def __aenter__(self) -> StageRunner:
        await ensure_topics(self.bootstrap, self.topics.pipeline_topics(list(self.pipeline.filters)))
        self.producer = make_producer(self.bootstrap)
        await self.producer.start()
        self.dedupe = DedupeStore.from_url(self.redis, prefix=f"agents-{self.n}")
        return StageRunner(pipeline=self.pipeline, topics=self.topics, dedupe=self.dedupe,
                           send=aiokafka_sender(self.producer), metrics=StreamMetrics(),
                           limits=Limits(max_content_bytes=20_000))

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        await self.dedupe.close()

    async def read(self, topic: str, at_least: int, wait: float = 2.0) -> list[tuple[bytes, bytes]]:
        consumer = make_consumer(self.bootstrap, topic)
        await consumer.start()
        got: list[tuple[bytes, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        quiet_until = None
        try:
            while loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    # Score messages: by record key (their Kafka key is the article id).
                    got.extend((record_key_of(m.key, m.headers), m.value) for m in messages)  # type: ignore[misc]
                if len(got) >= at_least:
                    quiet_until = quiet_until or loop.time() + wait
                    if loop.time() > quiet_until:
                        break
        finally:
            await consumer.stop()
        return got


def test_redelivered_batch_yields_the_same_records(pipeline: Pipeline, broker, redis_server) -> None:
    articles = synthetic_articles(12, seed=31)

    async def run() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], StageRunner]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            raw = _inbound(articles, h.topics.raw.name)
            await runner.prefilter(raw)
            await runner.prefilter(raw)  # redelivered after a crash before the commit
            screened = await h.read(h.topics.screened.name, 1, wait=1.0)
            probe_in = _inbound([v for _, v in screened], h.topics.screened.name)
            await runner.probe(probe_in)
            await runner.probe(probe_in)
            escalated = await h.read(h.topics.escalated.name, 1, wait=1.0)
            model_in = _inbound([v for _, v in escalated], h.topics.escalated.name)
            await runner.model(model_in)
            await runner.model(model_in)
            scores = await h.read(h.topics.all_scores.name, len(articles) * len(STREAM_FILTERS))
            return screened, scores, runner

    screened, scores, runner = asyncio.run(run())
    keys = [k for k, _ in scores]
    assert len(keys) == len(set(keys)) == len(articles) * len(STREAM_FILTERS), "one message per key"
    skipped = {stage: runner.metrics.duplicates.labels(stage, "skipped")._value.get()
               for stage in ("prefilter", "probe", "model")}
    assert skipped["probe"] > 0 and skipped["model"] > 0, "second passes found their records delivered: skipped"
    assert {orjson.loads(v)["article"]["id"] for _, v in screened} <= {orjson.loads(a)["id"] for a in articles}


def test_a_record_stored_by_a_crashed_worker_is_the_one_emitted(pipeline: Pipeline, broker, redis_server) -> None:
    articles = synthetic_articles(4, seed=32)

    async def run() -> tuple[dict[bytes, bytes], dict[RecordKey, bytes]]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            # What a worker that died after storing its records (before sending them) left behind:
            # the same scores, an earlier scored_at.
            records, screened = pipeline.screen([parse_article(a) for a in articles])
            final, _ = pipeline.probe(screened)
            earlier = [r.model_copy(update={"scored_at": datetime.now(UTC) - timedelta(hours=1)})
                       for r in [*records, *final]]
            claims = await runner.dedupe.claim(earlier)
            stored = {c.key: c.payload for c in claims}
            await runner.prefilter(_inbound(articles, h.topics.raw.name))
            fwd = await h.read(h.topics.screened.name, 1, wait=1.0)
            await runner.probe(_inbound([v for _, v in fwd], h.topics.screened.name))
            out = dict(await h.read(h.topics.all_scores.name, len(stored)))
            return out, stored

    out, stored = asyncio.run(run())
    assert {RecordKey.parse(k) for k in out} == set(stored)
    for key, payload in out.items():
        assert payload == stored[RecordKey.parse(key)], "the stored record is re-emitted, not a new one"
        assert ScoreRecord.from_json(payload).scored_at < datetime.now(UTC) - timedelta(minutes=30)


def test_bad_items_go_to_the_dlq_and_the_rest_of_the_batch_flows(pipeline: Pipeline, broker, redis_server) -> None:
    demo = pipeline.filters["demo"]
    assert demo.package.has_stage2, "the demo filter has a stage-2 student"

    async def run() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            good = Escalation(article_id="esc-ok", text="A city opened a free clinic that now serves 40,000 people.",
                              filter="demo", package_hash=demo.ref.package_hash,
                              stage1_raw=[5.0] * len(demo.package.config.dimensions), stage1_estimate=5.0,
                              prefilter=PrefilterResult(passed=True))
            unknown = good.model_copy(update={"article_id": "esc-1", "filter": "no_such_filter"})
            batch = _inbound([encode(unknown), b'{"article_id": "esc-2", "text": 3}', encode(good), b"\xff"],
                             h.topics.escalated.name)
            await runner.model(batch)
            dead = await h.read(h.topics.dlq.name, 3)
            scored = await h.read(h.topics.all_scores.name, 1)
            screened_bad = _inbound([b'{"article": {"id": "s-1"}}'], h.topics.screened.name)
            await runner.probe(screened_bad)
            return dead, scored, await h.read(h.topics.dlq.name, 4)

    first, scored, everything = asyncio.run(run())
    letters = [DeadLetterRecord.parse(v) for _, v in first]
    assert sorted((d.article_id or "", d.stage, d.error_type.rsplit(".", 1)[-1]) for d in letters) == [
        ("", "model", "WireFormatError"), ("esc-1", "model", "ScoringError"), ("esc-2", "model", "WireFormatError")]
    (record,) = [ScoreRecord.from_json(v) for _, v in scored]
    assert (record.article_id, record.filter.name, record.stage.value) == ("esc-ok", "demo", "stage2")
    probe_letter = [DeadLetterRecord.parse(v) for _, v in everything if DeadLetterRecord.parse(v).stage == "probe"]
    assert [(d.article_id, d.error_type.rsplit(".", 1)[-1]) for d in probe_letter] == [("s-1", "WireFormatError")]



def test_an_escalation_that_forms_no_record_key_costs_itself_only(pipeline: Pipeline, broker, redis_server) -> None:
    demo = pipeline.filters["demo"]

    async def run() -> tuple[Sent, Topics]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            sent = _tee(runner)
            good = Escalation(article_id="feed|esc-ok", text="A city opened a free clinic for 40,000 people.",
                              filter="demo", package_hash=demo.ref.package_hash,
                              stage1_raw=[5.0] * len(demo.package.config.dimensions), stage1_estimate=5.0,
                              prefilter=PrefilterResult(passed=True))
            # Not a filter's name, so the record key takes the (empty) hash the message carries.
            keyless = good.model_copy(update={"article_id": "esc-bad", "filter": "no|such", "package_hash": ""})
            await runner.model(_inbound([encode(keyless), encode(good)], h.topics.escalated.name))
            return sent, h.topics

    sent, topics = asyncio.run(run())
    (letter,) = _letters(sent, topics.dlq.name)
    assert (letter.article_id, letter.stage, letter.error_type.rsplit(".", 1)[-1]) == ("esc-bad", "model", "ValueError")
    (scored,) = [(k, dict(h)) for t, k, _, h in sent if t == topics.all_scores.name]
    kafka_key, headers = scored
    assert kafka_key == b"feed|esc-ok", "score messages are keyed by the article id, '|' and all"
    text = text_hash("A city opened a free clinic for 40,000 people.")
    assert RecordKey.parse(headers["fluxscore.record_key"]) == RecordKey("feed|esc-ok", "demo", demo.ref.package_hash,
                                                                         text)
    assert headers["fluxscore.record_key"] == f"feed|esc-ok|demo|{demo.ref.package_hash}|{text}".encode()

# -- one bad record costs one record (the [hardening] findings) -----------------------------------------



def _tee(runner: StageRunner) -> Sent:
    """Record what the runner sends, while still sending it to the real broker."""
    sent: Sent = []
    real = runner.send

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None) -> Any:
        sent.append((topic, key, value, list(headers or [])))
        return await real(topic, key, value, headers)

    runner.send = send
    return sent


def _letters(sent: Sent, dlq: str) -> list[DeadLetterRecord]:
    return [DeadLetterRecord.parse(v, h) for t, _, v, h in sent if t == dlq]


def _scored_ids(sent: Sent, topics: Topics) -> set[str]:
    return {orjson.loads(v)["article_id"] for t, _, v, _ in sent if t == topics.all_scores.name}


def test_poison_records_are_dead_lettered_with_coordinates_and_the_rest_flows(
        pipeline: Pipeline, broker, redis_server) -> None:
    deep = json.dumps({"id": "deep", "title": "t", "content": "c", "metadata": nest(1, 300, as_list=False)}).encode()
    surrogate = json.dumps({"id": "sur\ud800", "content": "c", "metadata": nest("\udc00", 400, as_list=True)}).encode()
    batch_payloads = [orjson.dumps(valid_record(0)), deep, surrogate, DEEPEST,
                      orjson.dumps({"id": "\u200b\u200d", "content": "c"}), orjson.dumps(valid_record(1))]

    async def run() -> tuple[Sent, Sent, Topics]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            sent = _tee(runner)
            await runner.prefilter(_inbound(batch_payloads, h.topics.raw.name))
            forwarded = [v for t, _, v, _ in sent if t == h.topics.screened.name]
            probe_sent = _tee(runner)
            await runner.probe(_inbound(forwarded, h.topics.screened.name))
            return sent, probe_sent, h.topics

    sent, probe_sent, topics = asyncio.run(run())
    letters = {d.source.offset: d for d in _letters(sent, topics.dlq.name)}
    assert sorted(letters) == [1, 2, 3, 4], "each poison record, and only those, is dead-lettered"
    assert letters[1].article_id == "deep" and "nested deeper than 32 levels" in letters[1].message
    assert "nested deeper" in letters[2].message
    assert "must not be blank" in letters[4].message
    for letter in letters.values():
        assert letter.source.topic == topics.raw.name and letter.stage == "prefilter"
        assert letter.headers["fluxscore.source.offset"] == str(letter.source.offset)
    # The valid articles behind them went on: screened, then scored or escalated for both filters.
    done = {(orjson.loads(v)["article_id"], orjson.loads(v)["filter"] if t == topics.escalated.name
             else orjson.loads(v)["filter"]["name"]) for t, _, v, _ in probe_sent
            if t in (topics.escalated.name, topics.all_scores.name)}
    assert done == {(f"ok-{i}", f) for i in (0, 1) for f in STREAM_FILTERS}


def test_an_unforeseen_error_costs_only_its_item(pipeline: Pipeline, broker, redis_server,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_screen = pipeline.screen

    def screen(articles: list[Any]) -> Any:
        # Stands in for a bug that only one input triggers (no such input is known: that is the point).
        if any(a.id == "ok-1" for a in articles):
            raise RuntimeError("a bug that only this article triggers")
        return real_screen(articles)

    monkeypatch.setattr(pipeline, "screen", screen)

    async def run() -> tuple[Sent, Topics]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            sent = _tee(runner)
            await runner.prefilter(_inbound([orjson.dumps(valid_record(i)) for i in range(3)], h.topics.raw.name))
            return sent, h.topics

    sent, topics = asyncio.run(run())
    (letter,) = _letters(sent, topics.dlq.name)
    assert (letter.article_id, letter.source.offset, letter.error_type) == ("ok-1", 1, "builtins.RuntimeError")
    forwarded = {orjson.loads(v)["article"]["id"] for t, _, v, _ in sent if t == topics.screened.name}
    assert forwarded | _scored_ids(sent, topics) == {"ok-0", "ok-2"}


def test_an_article_too_large_to_forward_is_dead_lettered_and_never_scored(
        pipeline: Pipeline, broker, redis_server) -> None:
    big = orjson.dumps({"id": "big", "title": "A large report", "content": "A council approved a plan. " * 400})

    async def run() -> tuple[Sent, Topics]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            runner.max_message_bytes = 8_000
            sent = _tee(runner)
            await runner.prefilter(_inbound([big, orjson.dumps(valid_record(0))], h.topics.raw.name))
            return sent, h.topics

    sent, topics = asyncio.run(run())
    (letter,) = _letters(sent, topics.dlq.name)
    assert letter.article_id == "big" and letter.error_type.endswith("MessageTooLargeError")
    assert "big" not in _scored_ids(sent, topics), "scored and dead-lettered are exclusive"
    assert {orjson.loads(v)["article"]["id"] for t, _, v, _ in sent if t == topics.screened.name} == {"ok-0"}


def test_the_screened_message_carries_the_text_once() -> None:
    article = parse_article(orjson.dumps({"id": "a", "title": "T", "content": "x" * 100_000}))
    screened = Screened(article=article, text="T\n\n" + "x" * 100_000, open_filters={})
    assert 100_000 < len(encode_screened(screened)) < 101_000
    assert decode_screened(encode_screened(screened)).text == screened.text


def test_a_rescoring_after_redis_lost_its_keys_publishes_the_same_bytes(
        pipeline: Pipeline, broker, redis_server) -> None:
    articles = synthetic_articles(8, seed=33)

    async def score_all() -> dict[bytes, tuple[bytes, dict[str, bytes]]]:
        # A fresh Redis prefix each time: the idempotency entries of the first run are gone.
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            sent = _tee(runner)
            await runner.prefilter(_inbound(articles, h.topics.raw.name))
            fwd = [v for t, _, v, _ in sent if t == h.topics.screened.name]
            await runner.probe(_inbound(fwd, h.topics.screened.name))
            esc = [v for t, _, v, _ in sent if t == h.topics.escalated.name]
            await runner.model(_inbound(esc, h.topics.escalated.name))
            return {record_key_of(k, hd) or b"": (v, dict(hd)) for t, k, v, hd in sent
                    if t == h.topics.all_scores.name}

    first, second = asyncio.run(score_all()), asyncio.run(score_all())
    assert first.keys() == second.keys() and len(first) == len(articles) * len(STREAM_FILTERS)
    assert {k: v for k, (v, _) in first.items()} == {k: v for k, (v, _) in second.items()}
    body = ScoreRecord.from_json(next(iter(first.values()))[0])
    assert body.scored_at is None and body.timings_ms == {}, "what varies travels in headers"
    for _, headers in first.values():
        assert "fluxscore.scored_at" in headers and "prefilter" in orjson.loads(headers["fluxscore.timings_ms"])


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(hostile_record(), min_size=1, max_size=4), st.lists(hostile_record(), max_size=2))
def test_every_hostile_input_ends_scored_or_dead_lettered_in_every_agent(
        pipeline: Pipeline, broker, redis_server, raw: list[bytes], wire_junk: list[bytes]) -> None:
    payloads = [orjson.dumps(valid_record(0)), *raw]

    async def run() -> tuple[Sent, Topics, list[int], list[int]]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            sent = _tee(runner)
            await runner.prefilter(_inbound(payloads, h.topics.raw.name))
            # Hostile bytes also where a stage expects its own wire format.
            screened = [v for t, _, v, _ in sent if t == h.topics.screened.name]
            await runner.probe(_inbound([*screened, *wire_junk], h.topics.screened.name))
            escalated = [v for t, _, v, _ in sent if t == h.topics.escalated.name]
            await runner.model(_inbound([*escalated, *wire_junk], h.topics.escalated.name))
            return sent, h.topics, list(range(len(screened))), list(range(len(escalated)))

    sent, topics, screened, escalated = asyncio.run(run())  # none of the handlers raises
    dead = {(d.source.topic, d.source.offset) for d in _letters(sent, topics.dlq.name)}
    outputs = {t: [orjson.loads(v) for tt, _, v, _ in sent if tt == t]
               for t in (topics.screened.name, topics.escalated.name, topics.all_scores.name)}
    scored = {(r["article_id"], r["filter"]["name"]) for r in outputs[topics.all_scores.name]}
    forwarded = {s["article"]["id"] for s in outputs[topics.screened.name]}
    for offset, payload in enumerate(payloads):
        if (topics.raw.name, offset) in dead:
            continue
        article_id = parse_article(payload).id  # not dead-lettered: it was a valid article
        assert article_id in forwarded or {(article_id, f) for f in STREAM_FILTERS} <= scored
    # Each valid screened article ended, for every open filter, as a record or an escalation.
    escalations = {(e["article_id"], e["filter"]) for e in outputs[topics.escalated.name]}
    for offset, s in enumerate(outputs[topics.screened.name]):
        if (topics.screened.name, offset) in dead:
            continue
        for name in s["open_filters"]:
            assert (s["article"]["id"], name) in scored | escalations
    # The junk in the stages' own wire formats was dead-lettered, one letter each.
    for topic, n_valid in ((topics.screened.name, len(screened)), (topics.escalated.name, len(escalated))):
        assert len([o for t, o in dead if t == topic and o >= n_valid]) == len(wire_junk)
    # Every escalation ended as a record (or a dead letter naming it).
    for e_offset, e in enumerate(outputs[topics.escalated.name]):
        assert (e["article_id"], e["filter"]) in scored or (topics.escalated.name, e_offset) in dead


# -- re-published articles, keys shared with the batch command, provenance (the [cli] findings) ---------------

async def _through_every_stage(runner: StageRunner, topics: Topics, payloads: list[bytes]) -> Sent:
    """Prefilter, probe and model over ``payloads``, each stage fed what the one before produced; returns
    what this call sent."""
    real = runner.send
    sent = _tee(runner)
    try:
        await runner.prefilter(_inbound(payloads, topics.raw.name))
        await runner.probe(_inbound([v for t, _, v, _ in sent if t == topics.screened.name], topics.screened.name))
        await runner.model(_inbound([v for t, _, v, _ in sent if t == topics.escalated.name],
                                    topics.escalated.name))
    finally:
        runner.send = real
    return sent


def _scores(sent: Sent, topics: Topics) -> dict[bytes, tuple[bytes, bytes, dict[str, bytes]]]:
    """record key -> (Kafka key, body, headers) of what went to scores.all."""
    return {dict(h)["fluxscore.record_key"]: (k or b"", v, dict(h)) for t, k, v, h in sent
            if t == topics.all_scores.name}


def test_an_edited_article_is_scored_again_and_names_the_record_it_supersedes(
        pipeline: Pipeline, broker, redis_server) -> None:
    original = [orjson.loads(a) for a in synthetic_articles(3, seed=34)]
    edited = {**original[0], "content": original[0]["content"] + " Update: the council has since doubled the budget.",
              "content_hash": "fluxus-v2"}

    async def run() -> tuple[Sent, Sent, Sent, Topics]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            first = await _through_every_stage(runner, h.topics, [orjson.dumps(a) for a in original])
            # FluxusSource re-collects: the same articles again, one of them edited under its id.
            again = await _through_every_stage(runner, h.topics, [orjson.dumps(a) for a in original])
            changed = await _through_every_stage(runner, h.topics, [orjson.dumps(edited),
                                                                   orjson.dumps(original[1])])
            return first, again, changed, h.topics

    first, again, changed, topics = asyncio.run(run())
    before, repeat, after = _scores(first, topics), _scores(again, topics), _scores(changed, topics)
    assert len(before) == len(original) * len(STREAM_FILTERS)
    assert repeat == {}, "an identical redelivery emits nothing new (its records were delivered)"
    # The edited article, and only it, got new records: one per filter, new keys, the same Kafka key.
    assert {RecordKey.parse(k).article_id for k in after} == {edited["id"]}
    assert len(after) == len(STREAM_FILTERS) and not after.keys() & before.keys()
    old_keys = {RecordKey.parse(k).filter: k.decode() for k in before if RecordKey.parse(k).article_id == edited["id"]}
    for key, (kafka_key, body, headers) in after.items():
        record = ScoreRecord.from_json(body)
        assert kafka_key == edited["id"].encode(), "score messages stay keyed by the article id"
        assert record.key == key.decode() and headers["fluxscore.record_key"] == key
        assert record.supersedes == old_keys[record.filter.name], "the previous record is named in provenance"
        assert record.text_hash != RecordKey.parse(old_keys[record.filter.name]).text_hash
    assert all(ScoreRecord.from_json(v).supersedes is None for _, v, _ in before.values())


def test_the_batch_command_and_the_stream_give_a_record_the_same_key_and_provenance(
        pipeline: Pipeline, broker, redis_server) -> None:
    articles = synthetic_articles(10, seed=35)
    batch = pipeline.score([parse_article(a) for a in articles])

    async def run() -> tuple[Sent, Topics]:
        h = Harness(pipeline, broker.bootstrap, redis_url(redis_server))
        async with h as runner:
            return await _through_every_stage(runner, h.topics, articles), h.topics

    sent, topics = asyncio.run(run())
    streamed = {k.decode(): ScoreRecord.from_json(v) for k, (_, v, _) in _scores(sent, topics).items()}
    assert {r.key for r in batch} == set(streamed)
    stages = set()
    for record in batch:
        other = streamed[record.key]
        # Everything but the volatile parts is the same, whichever path scored it.
        assert record.stable().to_json() == other.to_json()
        assert record.fluxscore_version and record.fluxscore_version[0].isdigit()
        revisions = record.model_revisions
        stages.add(record.stage.value)
        if record.stage.value in ("stage1", "stage2"):
            assert revisions["embedding_model"].startswith("sha256:"), "the bundled MiniLM: its files' hash"
        if record.stage.value == "stage2":
            assert revisions["base_model"].startswith("sha256:")
        else:
            assert "base_model" not in revisions, "only the models the record's stage ran"
        if record.stage.value == "prefilter":
            assert revisions == {}
    assert {"stage1", "stage2"} <= stages
