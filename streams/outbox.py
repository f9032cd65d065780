"""The messages one micro-batch produces, sent together and confirmed before the batch is acknowledged.

A batch's input offsets are committed only after :meth:`Outbox.flush` returns, i.e. after Kafka has
acknowledged every output (at-least-once). Retriable send errors (broker away, leader moving) wait, by
the project's retry policy (:mod:`scoring.retry`), and resend only what is still unacknowledged; a message
Kafka refuses for good (too large) is replaced by its fallback, a dead letter for the input that produced
it, so one bad record never blocks its partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from scoring.retry import retry_forever
from streams.exceptions import StreamError

log = logging.getLogger("fluxscore.streams.outbox")
Headers = list[tuple[str, bytes]]


class Sender(Protocol):
    async def __call__(self, topic: str, key: bytes | None, value: bytes,
                       headers: Headers | None) -> Awaitable[Any]: ...


@dataclass
class Message:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers | None = None
    # Built only if Kafka refuses the message for good: what to send instead (None: nothing).
    fallback: Callable[[BaseException], Message | None] | None = None


def _kafka_error(exc: BaseException) -> BaseException:
    # Faust wraps the client's error (ProducerSendError ... from KafkaError); judge the original.
    while not isinstance(exc, KafkaError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _permanent(exc: BaseException) -> bool:
    """Kafka will refuse this message whatever we do (too large, not authorised), as opposed to 'later'."""
    exc = _kafka_error(exc)
    if isinstance(exc, (KafkaTimeoutError, KafkaConnectionError)):
        return False
    return isinstance(exc, KafkaError) and not getattr(exc, "retriable", False) \
        and not getattr(exc, "invalid_metadata", False)


@dataclass
class Outbox:
    send: Sender
    max_backoff: float = 5.0
    on_retry: Callable[[BaseException, int], None] | None = None
    messages: list[Message] = field(default_factory=list)

    def add(self, message: Message) -> None:
        self.messages.append(message)

    async def flush(self) -> list[Message]:
        """Send everything queued; return the messages that were delivered (fallbacks included)."""
        pending = self.messages
        delivered: list[Message] = []
        self.messages = []

        async def send_pending() -> None:
            # One attempt of the retry policy: send what is still pending. A round that only swapped
            # refused messages for their fallbacks is no failure (nothing to wait for): the fallbacks,
            # new messages, go out at once. A transient failure ends the attempt with what is left.
            nonlocal pending
            while pending:
                pending, transient = await self._send_round(pending, delivered)
                if transient is not None:
                    raise _StillPending(transient, len(pending))

        def on_retry(exc: BaseException, attempt: int) -> None:
            if self.on_retry is not None:  # the hook is told the send error, not our wrapper
                self.on_retry(exc.error if isinstance(exc, _StillPending) else exc, attempt)

        # Infrastructure retry: Kafka comes back eventually, and the batch must not be acknowledged before.
        await retry_forever(send_pending, retry_on=(_StillPending,), what="Kafka send", max_backoff=self.max_backoff,
                            on_retry=on_retry, logger=log, describe=str)
        return delivered

    async def _send_round(self, pending: list[Message], delivered: list[Message]
                          ) -> tuple[list[Message], BaseException | None]:
        """Send ``pending`` once; add what Kafka acknowledged to ``delivered``. Returns what to send again
        (transient failures, and the fallbacks of refused messages) and the first transient error."""
        futures: list[Awaitable[Any] | BaseException] = []
        for msg in pending:
            try:
                futures.append(await self.send(msg.topic, msg.key, msg.value, msg.headers))
            except Exception as exc:  # the producer may refuse before queuing (buffer full, closed)
                futures.append(exc)
        results = await asyncio.gather(*(_settle(f) for f in futures))
        retry: list[Message] = []
        transient: BaseException | None = None
        for msg, result in zip(pending, results, strict=True):
            if not isinstance(result, BaseException):
                delivered.append(msg)
            elif _permanent(result):
                if msg.fallback is None:
                    raise StreamError(f"Kafka refused a message to {msg.topic} for good: "
                                      f"{type(result).__name__}: {result}", topic=msg.topic)
                log.warning("message refused, sending its fallback",
                            extra={"topic": msg.topic, "error": f"{type(result).__name__}: {result}"})
                instead = msg.fallback(_kafka_error(result))
                if instead is not None:
                    retry.append(instead)
            else:
                transient = transient or result
                retry.append(msg)
        return retry, transient


class _StillPending(Exception):
    """Some messages of the batch were not acknowledged; ``error`` is the first send error."""

    def __init__(self, error: BaseException, pending: int) -> None:
        super().__init__(f"{pending} message(s) pending: {type(error).__name__}: {error}")
        self.error = error
        self.pending = pending


async def _settle(future: Awaitable[Any] | BaseException) -> Any:
    if isinstance(future, BaseException):
        return future
    try:
        return await future
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return exc
