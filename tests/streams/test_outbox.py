"""The outbox against the real broker: delivery, and fallbacks for messages Kafka refuses for good."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from streams.embedded import EmbeddedBroker
from streams.exceptions import StreamError
from streams.kafka import aiokafka_sender, ensure_topics, make_consumer, make_producer
from streams.outbox import Message, Outbox
from streams.topics import TopicSpec

pytestmark = pytest.mark.integration
_n = itertools.count()


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
