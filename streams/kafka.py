"""Plain Kafka clients (aiokafka) for what is not an agent: topic creation, producing files, tailing topics."""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.exceptions import BrokerUnavailableError, StreamError
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


@contextmanager
def quiet_client_logs(level: int = logging.CRITICAL) -> Iterator[None]:
    """Raise the ``aiokafka`` loggers' level for the ``with`` block (a command's run).

    aiokafka logs an ERROR line for every failed connection attempt, dozens while a broker is away; a
    command waits a bounded time and then reports the outcome itself, in one line naming the broker.
    """
    logger = logging.getLogger("aiokafka")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


T = TypeVar("T")
# Under "aiokafka" on purpose: a worker's log shows these waits like the client's own lines, and a
# command's quiet_client_logs silences both while it waits for its one-line verdict.
_CONNECT_LOG = logging.getLogger("aiokafka.fluxscore.connect")


async def _with_admin(bootstrap: str, timeout: float, call: Callable[[AIOKafkaAdminClient], Awaitable[T]]) -> T:
    """``call(admin)``, retried while the broker is still coming up, for at most ``timeout`` seconds in all."""
    from scoring.retry import retry_bounded

    last: list[BaseException] = []

    async def attempt() -> T:
        admin = AIOKafkaAdminClient(bootstrap_servers=servers(bootstrap),
                                    request_timeout_ms=max(1000, min(10_000, int(timeout * 1000))))
        try:
            await admin.start()
            return await call(admin)
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            last[:] = [exc]
            raise
        finally:
            await admin.close()

    try:
        # The overall bound also covers an address that swallows packets, where one connection attempt
        # alone would hang for the client's request timeout; the project's one backoff policy retries.
        async with asyncio.timeout(timeout):
            return await retry_bounded(attempt, retry_on=(KafkaConnectionError, KafkaError, OSError),
                                       what=f"Kafka at {bootstrap}", max_time=timeout, initial=0.25,
                                       max_backoff=2.0, logger=_CONNECT_LOG)
    except (TimeoutError, KafkaConnectionError, KafkaError, OSError):
        pass
    raise _unreachable(bootstrap, timeout, last[0] if last else None)


def _unreachable(bootstrap: str, timeout: float, last: BaseException | None) -> BrokerUnavailableError:
    # aiokafka's "Unable to bootstrap from [('host', port, <AddressFamily…>)]" only repeats the address.
    unhelpful = last is None or isinstance(last, TimeoutError) or "Unable to bootstrap" in str(last)
    reason = "" if unhelpful else f" ({type(last).__name__}: {last})"
    return BrokerUnavailableError(f"cannot reach the Kafka broker at {bootstrap} within {timeout:g} s{reason}")


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], *, replication: int = 1,
                        timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet (retrying while the broker is still coming up)."""
    async def create(admin: AIOKafkaAdminClient) -> None:
        existing = set(await admin.list_topics())
        wanted = {s.name: s for s in specs if s.name not in existing}
        if wanted:
            response = await admin.create_topics([NewTopic(s.name, s.partitions, replication)
                                                  for s in wanted.values()])
            for name, code, *_ in getattr(response, "topic_errors", []) or []:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise BrokerUnavailableError(f"cannot create topic {name}: error code {code}")
            log.info("topics created", extra={"topics": sorted(wanted)})

    await _with_admin(bootstrap, timeout, create)


async def topic_names(bootstrap: str, *, timeout: float = 30.0) -> set[str]:
    """The names of the cluster's topics (waiting up to ``timeout`` s for the broker)."""
    async def names(admin: AIOKafkaAdminClient) -> set[str]:
        return set(await admin.list_topics())

    return await _with_admin(bootstrap, timeout, names)


class TopicNotFoundError(StreamError):
    """A topic to read does not exist; names the topics with a similar name.

    Here, beside the lookup, rather than among the record errors of :mod:`streams.exceptions`: only a
    command that reads a topic it did not create raises it.
    """

    def __init__(self, topic: str, *, bootstrap: str, similar: Sequence[str] = ()) -> None:
        hint = (f"; topics with a similar name: {', '.join(similar)}" if similar
                else "; no topic there has a similar name")
        super().__init__(f"topic {topic} does not exist on {bootstrap}{hint}")
        self.topic = topic
        self.similar = list(similar)


def similar_topics(name: str, existing: set[str] | Sequence[str], *, limit: int = 8) -> list[str]:
    """Topics a mistyped ``name`` may have meant: those sharing its prefix, then the closest spellings."""
    public = sorted(t for t in existing if not t.startswith("__"))
    head = name.rsplit(".", 1)[0] + "." if "." in name else name
    found = [t for t in public if t.startswith(head) or name.startswith(t)]
    found += [t for t in difflib.get_close_matches(name, public, n=limit, cutoff=0.6) if t not in found]
    return found[:limit]


async def start_client(client: AIOKafkaProducer | AIOKafkaConsumer, bootstrap: str, timeout: float) -> None:
    """``client.start()`` within ``timeout`` s, or :class:`BrokerUnavailableError` naming the broker."""
    try:
        await asyncio.wait_for(client.start(), timeout)
    except (TimeoutError, KafkaConnectionError, KafkaError, OSError) as exc:
        await client.stop()
        raise _unreachable(bootstrap, timeout, exc) from None


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


@dataclass(frozen=True)
class RejectedLine:
    """A line of the input that was not published, and why."""

    line: int
    reason: str


@dataclass
class ProduceReport:
    """What :func:`publish_file` did: messages published (acknowledged) and lines rejected."""

    published: int = 0
    rejected: list[RejectedLine] = field(default_factory=list)


def message_size(key: bytes | None, value: bytes) -> int:
    """Bytes of one record as the producer counts them against its ``max_request_size``."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []))


async def publish_file(path: Path, bootstrap: str, topic: str, *, partitions: int = 4, replication: int = 1,
                       rate: float = 0.0, limit: int | None = None, max_batch_bytes: int = 16384,
                       max_message_bytes: int = 1_048_576, check: Callable[[bytes], object] | None = None,
                       on_reject: Callable[[RejectedLine], None] | None = None,
                       connect_timeout: float = 30.0) -> ProduceReport:
    """Publish each line of a JSONL file as one message, keyed by its ``id``, its bytes as they are.

    A line ``check`` raises on, one larger than ``max_message_bytes`` and one the broker does not
    acknowledge is rejected with its line number and reason (``on_reject`` hears of it at once); the
    other lines are still published. Raises :class:`BrokerUnavailableError` when the broker cannot be
    reached within ``connect_timeout`` seconds.
    """
    report = ProduceReport()

    def reject(line_no: int, reason: str) -> None:
        rejected = RejectedLine(line_no, reason)
        report.rejected.append(rejected)
        if on_reject is not None:
            on_reject(rejected)

    await ensure_topics(bootstrap, [TopicSpec(topic, partitions)], replication=replication, timeout=connect_timeout)
    producer = make_producer(bootstrap, max_batch_bytes=max_batch_bytes, max_request_size=max_message_bytes)
    await start_client(producer, bootstrap, connect_timeout)
    sent = 0
    started = time.perf_counter()
    try:
        pending: list[tuple[int, asyncio.Future[Any]]] = []
        with path.open("rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                if check is not None:
                    try:
                        check(line)
                    except Exception as exc:  # any reason a line is refused, not only validation errors
                        reject(line_no, str(exc) or type(exc).__name__)
                        continue
                key = _key_of(line)
                try:
                    pending.append((line_no, await producer.send(topic, value=line, key=key)))
                except MessageSizeTooLargeError:
                    reject(line_no, f"{message_size(key, line)} bytes as a message, above the "
                                    f"{max_message_bytes} bytes a message may have (FLUXSCORE_MAX_MESSAGE_BYTES)")
                    continue
                sent += 1
                if rate > 0:
                    await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
                if limit is not None and sent >= limit:
                    break
        outcomes = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
        for (line_no, _), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                reject(line_no, f"not acknowledged by the broker: {type(outcome).__name__}: {outcome}")
            else:
                report.published += 1
    finally:
        await producer.stop()
    report.rejected.sort(key=lambda r: r.line)
    return report


async def produce_file(path: Path, bootstrap: str, topic: str, *, partitions: int = 4, replication: int = 1,
                       rate: float = 0.0, limit: int | None = None, max_batch_bytes: int = 16384) -> int:
    """Publish each line of a JSONL file as one message, keyed by its ``id``; returns the count published.

    What the demo, the benchmarks and the stream tests publish with: every line goes out as it is
    (hostile ones included, the DLQ tests need them); a line too large to send is logged and skipped.
    ``fluxscore produce`` uses :func:`publish_file`, which also validates and reports each line.
    """
    def warn(rejected: RejectedLine) -> None:
        log.warning("line not published", extra={"path": str(path), "line": rejected.line,
                                                 "reason": rejected.reason})

    report = await publish_file(path, bootstrap, topic, partitions=partitions, replication=replication, rate=rate,
                                limit=limit, max_batch_bytes=max_batch_bytes, on_reject=warn)
    return report.published
