"""Wait-and-retry for infrastructure that is temporarily away (Redis restarting, a broker failing over).

A stage that cannot reach Redis or Kafka must not drop or half-process a batch: it waits, which stops
its consumer from taking more (backpressure), and carries on where it stopped once the service is back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("fluxscore.streams.retry")


async def retry_forever(op: Callable[[], Awaitable[T]], *, retry_on: tuple[type[BaseException], ...],
                        what: str, max_backoff: float = 5.0, initial: float = 0.05,
                        on_retry: Callable[[BaseException, int], None] | None = None) -> T:
    """Run ``op`` until it succeeds, sleeping with capped, jittered exponential backoff on ``retry_on``."""
    attempt = 0
    delay = initial
    while True:
        try:
            return await op()
        except retry_on as exc:
            attempt += 1
            if on_retry is not None:
                on_retry(exc, attempt)
            level = logging.WARNING if attempt == 1 or attempt % 20 == 0 else logging.DEBUG
            log.log(level, "%s unavailable, retrying", what,
                    extra={"attempt": attempt, "error": f"{type(exc).__name__}: {exc}", "backoff_s": round(delay, 3)})
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(max_backoff, delay * 2)
