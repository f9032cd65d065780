"""Idempotency in Redis: one scored record per (article id, filter, package_hash, text_hash).

The first worker to score a key stores the record (``HSETNX``); any later scoring of the same key —
an article redelivered after a crash, or two workers racing through a rebalance — gets the stored
record back and emits that one, so a key never carries two different records. After the record's
messages are acknowledged by Kafka the key is marked sent, and a redelivery skips it entirely.

Next to the records, one "latest" entry per (article id, filter) names the key of the last record stored
for it. A new record whose key differs (the article was edited, or a new package version scored it) names
that key in its ``supersedes`` field, and becomes the latest. Storing a record and moving the pointer is
one Lua script, which refuses when the pointer moved since it was read (another record of the same article
in the same batch, or a racing worker): the record is then rebuilt against the new pointer, so each version
supersedes the one stored before it.

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
from streams.exceptions import StreamError
from streams.retry import retry_forever

# BusyLoadingError (Redis replaying its AOF after a restart) subclasses ConnectionError.
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
_RECORD = "record"
T = TypeVar("T")
_SENT = "sent"
# Rounds of "the latest pointer moved, rebuild": each one means another record of the same (article, filter)
# was stored meanwhile, so more than a handful only happens with a bug, not under any real contention.
_MAX_ROUNDS = 32

# KEYS: per record, its hash and its (article, filter) pointer. ARGV: the TTL, then per record its payload,
# the pointer value the payload's `supersedes` was built from ('' for none) and its own key text.
# Returns per record {fresh, stored payload, sent} or, when the pointer moved first, {-1, pointer now}.
_CLAIM = """
local ttl = ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local rec, latest = KEYS[2 * i - 1], KEYS[2 * i]
  local payload, expected, key = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local current = redis.call('GET', latest) or ''
  if redis.call('HEXISTS', rec, 'record') == 0 and current ~= expected and current ~= key then
    out[i] = {-1, current}
  else
    local fresh = redis.call('HSETNX', rec, 'record', payload)
    if fresh == 1 then
      redis.call('SET', latest, key, 'EX', ttl)
    end
    redis.call('EXPIRE', rec, ttl)
    local got = redis.call('HMGET', rec, 'record', 'sent')
    out[i] = {fresh, got[1], got[2] or ''}
  end
end
return out
"""


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

    def latest_key(self, record_key: RecordKey) -> str:
        """The pointer to the last record stored for this key's (article, filter), whatever its version."""
        return f"{self.prefix}:latest:{record_key.article_filter}"

    async def latest(self, record_key: RecordKey) -> RecordKey | None:
        """The key of the last record stored for ``record_key``'s (article, filter), if Redis still has it."""

        async def op() -> Any:
            return await self.client.get(self.latest_key(record_key))

        value = await self._retry("latest", op)
        return RecordKey.parse(value) if value else None

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return await retry_forever(op, retry_on=REDIS_UNAVAILABLE, what=f"Redis ({what})",
                                   max_backoff=self.max_backoff, on_retry=self._on_retry)

    async def claim(self, records: Sequence[ScoreRecord]) -> list[Claim]:
        """Store each record unless its key has one; return what to emit for each, in order.

        A record stored here names in ``supersedes`` the key that was its (article, filter)'s latest, when
        that is another key; a record already stored is returned as it was stored.
        """
        if not records:
            return []
        keys = [r.record_key for r in records]

        async def read() -> list[str | None]:
            return await self._pointers(keys)

        pointers = await self._retry("claim", read)
        claims: dict[int, Claim] = {}
        todo = list(range(len(records)))
        for _ in range(_MAX_ROUNDS):
            payloads = {i: self._payload(records[i], keys[i], pointers[i]) for i in todo}
            batch = [(keys[i], payloads[i], pointers[i]) for i in todo]

            async def store(batch: list[tuple[RecordKey, bytes, str | None]] = batch) -> list[Any]:
                return await self._store(batch)

            results = await self._retry("claim", store)
            moved: list[int] = []
            for i, result in zip(todo, results, strict=True):
                if int(result[0]) < 0:
                    pointers[i] = _text(result[1]) or None
                    moved.append(i)
                else:
                    fresh, stored, sent = int(result[0]), result[1], result[2]
                    claims[i] = Claim(key=keys[i], payload=stored or payloads[i], fresh=fresh == 1, sent=bool(sent))
            if not moved:
                return [claims[i] for i in range(len(records))]
            todo = moved
        raise StreamError(f"the latest-record pointers of {len(todo)} record(s) kept moving for {_MAX_ROUNDS} rounds",
                          record_key=keys[todo[0]].format())

    async def _store(self, batch: Sequence[tuple[RecordKey, bytes, str | None]]) -> list[Any]:
        """One run of the claim script over (key, payload, pointer the payload was built from)."""
        script_keys = [k for key, _, _ in batch for k in (self.redis_key(key), self.latest_key(key))]
        args: list[Any] = [self.ttl]
        for key, payload, pointer in batch:
            args += [payload, pointer or "", key.format()]
        return list(await self.client.eval(_CLAIM, len(script_keys), *script_keys, *args))

    async def _pointers(self, keys: Sequence[RecordKey]) -> list[str | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(self.latest_key(key))
            return [_text(v) or None for v in await pipe.execute()]

    @staticmethod
    def _payload(record: ScoreRecord, key: RecordKey, pointer: str | None) -> bytes:
        # Only a different key is superseded: the same key again is a rescoring of that very record.
        supersedes = pointer if pointer and pointer != key.format() else None
        return record.model_copy(update={"supersedes": supersedes}).to_json()

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


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
