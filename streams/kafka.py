"""Plain Kafka clients (aiokafka) for what is not an agent: topic creation, producing files, tailing topics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streams.exceptions import BrokerUnavailableError
from streams.outbox import Sender
from streams.topics import TopicSpec

log = logging.getLogger("fluxscore.streams.kafka")


def servers(bootstrap: str) -> list[str]:
    """``host:port[,host:port]`` (an optional ``kafka://`` scheme is accepted) -> aiokafka's list."""
    out = [s.strip().removeprefix("kafka://") for s in bootstrap.replace(";", ",").split(",") if s.strip()]
    if not out:
        raise BrokerUnavailableError(f"no bootstrap server in {bootstrap!r}")
    return out


def faust_broker(bootstrap: str) -> str:
    return ";".join(f"kafka://{s}" for s in servers(bootstrap))


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], *, replication: int = 1,
                        timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet (retrying while the broker is still coming up)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=servers(bootstrap), request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = {s.name: s for s in specs if s.name not in existing}
            if wanted:
                response = await admin.create_topics([NewTopic(s.name, s.partitions, replication)
                                                      for s in wanted.values()])
                for name, code, *_ in getattr(response, "topic_errors", []) or []:
                    if code not in (0, TopicAlreadyExistsError.errno):
                        raise BrokerUnavailableError(f"cannot create topic {name}: error code {code}")
                log.info("topics created", extra={"topics": sorted(wanted)})
            return
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerUnavailableError(f"Kafka at {bootstrap} is not reachable: {exc}") from None
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def make_producer(bootstrap: str, *, max_batch_bytes: int = 16384, linger_ms: int = 5,
                  max_request_size: int = 1_048_576) -> AIOKafkaProducer:
    # acks=all and no idempotence: Tansu does not implement idempotent producers, and the scorer is
    # idempotent by key instead (see streams.dedupe).
    return AIOKafkaProducer(bootstrap_servers=servers(bootstrap), acks="all", enable_idempotence=False,
                            max_batch_size=max_batch_bytes, linger_ms=linger_ms,
                            max_request_size=max_request_size)


def make_consumer(bootstrap: str, *topics: str, group_id: str | None = None,
                  from_beginning: bool = True) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, bootstrap_servers=servers(bootstrap), group_id=group_id,
                            auto_offset_reset="earliest" if from_beginning else "latest",
                            enable_auto_commit=group_id is not None, metadata_max_age_ms=5000)


def aiokafka_sender(producer: AIOKafkaProducer) -> Sender:
    """An :data:`~streams.outbox.Sender` over a plain aiokafka producer (tools and tests; workers use Faust's)."""
    async def send(topic: str, key: bytes | None, value: bytes,
                   headers: list[tuple[str, bytes]] | None) -> Awaitable[Any]:
        return await producer.send(topic, value=value, key=key, headers=headers)
    return send


def _key_of(line: bytes) -> bytes | None:
    """The article id of a JSONL line as a Kafka key; None for a line without one (it still goes out)."""
    try:
        body = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return value.encode() if isinstance(value, str) and value else None


async def produce_file(path: Path, bootstrap: str, topic: str, *, partitions: int = 4, replication: int = 1,
                       rate: float = 0.0, limit: int | None = None, max_batch_bytes: int = 16384) -> int:
    """Publish each line of a JSONL file as one message, keyed by its ``id``; returns the count.

    What ``fluxscore produce``, the demo, the benchmarks and the stream tests all publish with.
    """
    await ensure_topics(bootstrap, [TopicSpec(topic, partitions)], replication=replication)
    producer = make_producer(bootstrap, max_batch_bytes=max_batch_bytes)
    await producer.start()
    sent = 0
    started = time.perf_counter()
    try:
        futures = []
        with path.open("rb") as fh:
            for raw in fh:
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                futures.append(await producer.send(topic, value=line, key=_key_of(line)))
                sent += 1
                if rate > 0:
                    await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
                if limit is not None and sent >= limit:
                    break
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent
