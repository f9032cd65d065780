"""Wait-and-retry for infrastructure that is temporarily away (Redis restarting, a broker failing over).

A stage that cannot reach Redis or Kafka must not drop or half-process a batch: it waits, which stops
its consumer from taking more (backpressure), and carries on where it stopped once the service is back.
The waiting itself is the project's one retry policy (:mod:`scoring.retry`); this module only names
the streams' logger and keeps the signature the stores call.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from scoring import retry as policy

T = TypeVar("T")
log = logging.getLogger("fluxscore.streams.retry")


async def retry_forever(op: Callable[[], Awaitable[T]], *, retry_on: tuple[type[BaseException], ...],
                        what: str, max_backoff: float = 5.0, initial: float = 0.05,
                        on_retry: Callable[[BaseException, int], None] | None = None) -> T:
    """Run ``op`` until it succeeds, sleeping with capped, jittered exponential backoff on ``retry_on``."""
    return await policy.retry_forever(op, retry_on=retry_on, what=f"{what} unavailable", initial=initial,
                                      max_backoff=max_backoff, on_retry=on_retry, logger=log)
