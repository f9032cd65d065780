"""Idempotency in Redis: one scored record per (article id, filter, package_hash).

The first worker to score a key stores the record (``HSETNX``); any later scoring of the same key —
an article redelivered after a crash, or two workers racing through a rebalance — gets the stored
record back and emits that one, so a key never carries two different records. After the record's
messages are acknowledged by Kafka the key is marked sent, and a redelivery skips it entirely.

Redis errors never drop work: every call waits and retries until Redis answers again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scoring.records import RecordKey, ScoreRecord
from streams.retry import retry_forever

# BusyLoadingError (Redis replaying its AOF after a restart) subclasses ConnectionError.
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
_RECORD = "record"
T = TypeVar("T")
_SENT = "sent"


@dataclass(frozen=True)
class Claim:
    """The record to emit for a key: the stored one, which may be an earlier worker's."""

    key: RecordKey
    payload: bytes
    fresh: bool   # this call stored it
    sent: bool    # already emitted and acknowledged before: skip

    @property
    def filter(self) -> str:
        return self.key.filter


class DedupeStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "fluxscore", ttl: int = 7 * 24 * 3600,
                 max_backoff: float = 5.0,
                 on_retry: Callable[[BaseException, int], None] | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self.max_backoff = max_backoff
        self._on_retry = on_retry

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> DedupeStore:
        client = aioredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0,
                                         health_check_interval=10)
        return cls(client, **kwargs)

    def redis_key(self, record_key: RecordKey) -> str:
        return f"{self.prefix}:score:{record_key.format()}"

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return await retry_forever(op, retry_on=REDIS_UNAVAILABLE, what=f"Redis ({what})",
                                   max_backoff=self.max_backoff, on_retry=self._on_retry)

    async def claim(self, records: Sequence[ScoreRecord]) -> list[Claim]:
        """Store each record unless its key has one; return what to emit for each, in order."""
        if not records:
            return []
        payloads = [r.to_json() for r in records]

        async def op() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                for record, payload in zip(records, payloads, strict=True):
                    key = self.redis_key(record.record_key)
                    pipe.hsetnx(key, _RECORD, payload)
                    pipe.expire(key, self.ttl)
                    pipe.hmget(key, [_RECORD, _SENT])
                return await pipe.execute()

        results = await self._retry("claim", op)
        claims: list[Claim] = []
        for i, (record, payload) in enumerate(zip(records, payloads, strict=True)):
            stored, sent = results[3 * i + 2]
            claims.append(Claim(key=record.record_key, payload=stored or payload, fresh=bool(results[3 * i]),
                                sent=bool(sent)))
        return claims

    async def lookup(self, keys: Sequence[RecordKey]) -> dict[RecordKey, Claim]:
        """Keys that already have a stored record (the others are absent from the result)."""
        if not keys:
            return {}

        async def op() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(self.redis_key(key), [_RECORD, _SENT])
                return await pipe.execute()

        results = await self._retry("lookup", op)
        found: dict[RecordKey, Claim] = {}
        for key, (stored, sent) in zip(keys, results, strict=True):
            if stored is not None:
                found[key] = Claim(key=key, payload=stored, fresh=False, sent=bool(sent))
        return found

    async def mark_sent(self, keys: Sequence[RecordKey]) -> None:
        """Record that these keys' messages were acknowledged by Kafka."""
        if not keys:
            return

        async def op() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hset(self.redis_key(key), _SENT, "1")
                await pipe.execute()

        await self._retry("mark_sent", op)

    async def wait_ready(self) -> None:
        await self._retry("ping", self._ping)

    async def _ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()
