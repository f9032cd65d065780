"""The outbox: delivery, resending only what is still pending on transient errors, and fallbacks for
messages Kafka refuses for good — against a scripted sender, and against the real broker."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

from streams.embedded import EmbeddedBroker
from streams.exceptions import StreamError
from streams.kafka import aiokafka_sender, ensure_topics, make_consumer, make_producer
from streams.outbox import Headers, Message, Outbox
from streams.topics import TopicSpec

_n = itertools.count()


# ----------------------------------------------------------------------------- scripted sender (unit)

class ScriptedKafka:
    """A Sender whose sends fail as scripted per key, in turn (None: acknowledged), then succeed.
    ``early`` errors are raised by the send call itself, as a producer refusing to queue does."""

    def __init__(self, script: dict[bytes, list[BaseException | None]] | None = None,
                 early: dict[bytes, list[BaseException]] | None = None) -> None:
        self.script = script or {}
        self.early = early or {}
        self.sent: list[tuple[str, bytes | None]] = []

    async def __call__(self, topic: str, key: bytes | None, value: bytes,
                       headers: Headers | None) -> Awaitable[Any]:
        self.sent.append((topic, key))
        if key is not None and self.early.get(key):
            raise self.early[key].pop(0)
        outcome = self.script[key].pop(0) if key is not None and self.script.get(key) else None

        async def ack() -> str:
            if outcome is not None:
                raise outcome
            return "ok"

        return ack()


def _flush(outbox: Outbox) -> list[Message]:
    return asyncio.run(asyncio.wait_for(outbox.flush(), 10))


def test_only_the_pending_messages_are_resent_and_the_hook_sees_the_send_error() -> None:
    timeout = KafkaTimeoutError()
    kafka = ScriptedKafka({b"b": [timeout, KafkaConnectionError()]})
    retries: list[tuple[BaseException, int]] = []
    outbox = Outbox(kafka, max_backoff=0.01, on_retry=lambda exc, n: retries.append((exc, n)))
    for key in (b"a", b"b", b"c"):
        outbox.add(Message("t", key, b"v"))
    delivered = _flush(outbox)
    assert sorted(m.key or b"" for m in delivered) == [b"a", b"b", b"c"]
    assert kafka.sent == [("t", b"a"), ("t", b"b"), ("t", b"c"), ("t", b"b"), ("t", b"b")]
    assert [n for _, n in retries] == [1, 2] and retries[0][0] is timeout
    assert outbox.messages == []


def test_a_refused_message_is_replaced_by_its_fallback_without_a_wait() -> None:
    kafka = ScriptedKafka({b"big": [MessageSizeTooLargeError()]})
    retries: list[int] = []
    outbox = Outbox(kafka, max_backoff=0.01, on_retry=lambda exc, n: retries.append(n))
    outbox.add(Message("main", b"big", b"x" * 10,
                       fallback=lambda exc: Message("dlq", b"big", type(exc).__name__.encode())))
    outbox.add(Message("main", b"gone", b"y", fallback=lambda exc: None))
    kafka.script[b"gone"] = [MessageSizeTooLargeError()]
    delivered = _flush(outbox)
    assert [(m.topic, m.value) for m in delivered] == [("dlq", b"MessageSizeTooLargeError")]
    assert kafka.sent == [("main", b"big"), ("main", b"gone"), ("dlq", b"big")]
    assert retries == []  # swapping in a fallback is no failure: nothing waited, nothing counted


def test_transient_and_refused_in_one_batch() -> None:
    kafka = ScriptedKafka({b"slow": [KafkaTimeoutError()], b"big": [MessageSizeTooLargeError()]},
                          early={b"full": [KafkaTimeoutError()]})  # the producer's buffer was full
    retries: list[int] = []
    outbox = Outbox(kafka, max_backoff=0.01, on_retry=lambda exc, n: retries.append(n))
    outbox.add(Message("t", b"slow", b"1"))
    outbox.add(Message("t", b"big", b"2", fallback=lambda exc: Message("dlq", b"big", b"dead")))
    outbox.add(Message("t", b"full", b"3"))
    delivered = _flush(outbox)
    assert sorted((m.topic, m.key or b"") for m in delivered) == [("dlq", b"big"), ("t", b"full"), ("t", b"slow")]
    assert kafka.sent[3:] == [("t", b"slow"), ("dlq", b"big"), ("t", b"full")]  # one resend round
    assert retries == [1]


def test_a_refused_message_without_fallback_stops_the_batch_at_once() -> None:
    kafka = ScriptedKafka({b"big": [MessageSizeTooLargeError()]})
    outbox = Outbox(kafka, max_backoff=0.01)
    outbox.add(Message("t", b"big", b"x"))
    with pytest.raises(StreamError, match="refused a message to t for good"):
        _flush(outbox)
    assert kafka.sent == [("t", b"big")]


def test_the_backoff_is_capped_by_max_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fluxscore.streams.outbox")
    kafka = ScriptedKafka({b"k": [KafkaTimeoutError()] * 5})
    outbox = Outbox(kafka, max_backoff=0.02)
    outbox.add(Message("t", b"k", b"v"))
    assert len(_flush(outbox)) == 1
    waits = [r.backoff_s for r in caplog.records if hasattr(r, "backoff_s")]
    assert len(waits) == 5 and max(waits) <= 0.02
    assert caplog.records[0].getMessage().startswith("Kafka send: 1 message(s) pending: KafkaTimeoutError")


def test_an_empty_outbox_sends_nothing() -> None:
    kafka = ScriptedKafka()
    assert _flush(Outbox(kafka)) == [] and kafka.sent == []


# ------------------------------------------------------------------------------------ real broker


async def _read(bootstrap: str, topic: str, n: int) -> list[tuple[bytes | None, bytes]]:
    consumer = make_consumer(bootstrap, topic)
    await consumer.start()
    got: list[tuple[bytes | None, bytes]] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < n:
                for messages in (await consumer.getmany(timeout_ms=300)).values():
                    got.extend((m.key, m.value) for m in messages)
    finally:
        await consumer.stop()
    return got


@pytest.mark.integration
def test_delivers_and_replaces_refused_messages_by_their_fallback(broker: EmbeddedBroker) -> None:
    main, fallback_topic = f"outbox-main-{next(_n)}", f"outbox-dlq-{next(_n)}"

    async def run() -> tuple[list[Message], list[tuple[bytes | None, bytes]], list[tuple[bytes | None, bytes]]]:
        await ensure_topics(broker.bootstrap, [TopicSpec(main, 2), TopicSpec(fallback_topic, 1)])
        producer = make_producer(broker.bootstrap, max_request_size=2000)
        await producer.start()
        try:
            outbox = Outbox(aiokafka_sender(producer))
            outbox.add(Message(main, b"a", b"small", [("h", b"1")]))
            outbox.add(Message(main, b"b", b"x" * 5000,
                               fallback=lambda exc: Message(fallback_topic, b"b", type(exc).__name__.encode())))
            outbox.add(Message(main, b"c", b"also small"))
            delivered = await outbox.flush()
            assert outbox.messages == []
        finally:
            await producer.stop()
        return (delivered, await _read(broker.bootstrap, main, 2), await _read(broker.bootstrap, fallback_topic, 1))

    delivered, main_msgs, fallback_msgs = asyncio.run(run())
    assert sorted(m.key or b"" for m in delivered) == [b"a", b"b", b"c"]
    assert sorted(main_msgs) == [(b"a", b"small"), (b"c", b"also small")]
    assert fallback_msgs == [(b"b", b"MessageSizeTooLargeError")]


@pytest.mark.integration
def test_a_refused_message_without_fallback_stops_the_batch(broker: EmbeddedBroker) -> None:
    topic = f"outbox-nofallback-{next(_n)}"

    async def run() -> None:
        await ensure_topics(broker.bootstrap, [TopicSpec(topic, 1)])
        producer = make_producer(broker.bootstrap, max_request_size=2000)
        await producer.start()
        try:
            outbox = Outbox(aiokafka_sender(producer))
            outbox.add(Message(topic, b"big", b"x" * 5000))
            await outbox.flush()
        finally:
            await producer.stop()

    with pytest.raises(StreamError, match="refused a message"):
        asyncio.run(run())


@pytest.mark.integration
def test_an_error_wrapped_like_faust_wraps_it_is_judged_by_its_cause(broker: EmbeddedBroker) -> None:
    from aiokafka.errors import KafkaError
    from faust.exceptions import ProducerSendError

    topic, dlq = f"outbox-wrapped-{next(_n)}", f"outbox-wrapped-dlq-{next(_n)}"

    async def run() -> list[Message]:
        await ensure_topics(broker.bootstrap, [TopicSpec(topic, 1), TopicSpec(dlq, 1)])
        producer = make_producer(broker.bootstrap, max_request_size=2000)
        await producer.start()
        plain = aiokafka_sender(producer)

        async def faust_like(topic: str, key: bytes | None, value: bytes, headers: object) -> object:
            try:
                return await plain(topic, key, value, None)
            except KafkaError as exc:  # what faust.transport.drivers.aiokafka.Producer.send does
                raise ProducerSendError(f"Error while sending: {exc!r}") from exc

        try:
            outbox = Outbox(faust_like)  # type: ignore[arg-type]
            outbox.add(Message(topic, b"k", b"x" * 5000,
                               fallback=lambda exc: Message(dlq, b"k", type(exc).__name__.encode())))
            return await asyncio.wait_for(outbox.flush(), 20)
        finally:
            await producer.stop()

    (delivered,) = asyncio.run(run())
    assert (delivered.topic, delivered.value) == (dlq, b"MessageSizeTooLargeError")
