"""The project's one retry policy, on tenacity: capped, jittered exponential backoff that defers to a
delay the server asked for.

Three callers share it: waiting for infrastructure that is temporarily away (Redis restarting, a broker
failing over; :func:`retry_forever`), the stream outbox's resend of what Kafka has not acknowledged yet,
and the oracle client's requests (:func:`retry_bounded`, which gives up with the last error).

The wait (:func:`policy_wait`) is the server's delay when the error carries one — a ``retry_after``
attribute in seconds, which the oracle sets from ``Retry-After`` or Gemini's ``retryDelay`` — and
otherwise ``initial * 2**(attempt-1)``, capped at ``maximum``, times a random factor in [0.5, 1] so that
workers that failed together do not retry together. The server's delay is not jittered (it names a
moment) but is capped too, so one answer cannot park a worker for an hour.

Each wait is logged at WARNING on the first retry and every 20th (an outage that lasts minutes writes
a few lines, not thousands), at DEBUG otherwise, and reported to an ``on_retry(exc, attempt)`` hook
(the stream metrics count waits with it).

This lives in ``scoring``, the ground floor, so streams and training can share it without importing
each other.

>>> from tenacity import RetryCallState
>>> state = RetryCallState(None, None, (), {})
>>> state.attempt_number = 4
>>> Backoff(0.5, 60.0, rand=lambda: 0.0)(state)  # 0.5 * 2**3, no jitter drawn
4.0
>>> Backoff(0.5, 3.0, rand=lambda: 1.0)(state)    # capped at 3, then the largest jitter halves it
1.5
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_after_delay
from tenacity.stop import stop_base, stop_never
from tenacity.wait import wait_base

T = TypeVar("T")
OnRetry = Callable[[BaseException, int], None]
Sleep = Callable[[float], Awaitable[None]]

log = logging.getLogger("fluxscore.retry")

INITIAL = 0.05
MAX_BACKOFF = 5.0
# Log at WARNING on the first retry and on every LOUD_EVERY-th; the others at DEBUG.
LOUD_EVERY = 20


def server_delay(exc: BaseException | None) -> float | None:
    """The delay (seconds) the server asked for, from ``exc.retry_after``; None when absent or unusable."""
    value = getattr(exc, "retry_after", None)
    # bool is an int; a flag is not a delay. NaN, infinities and negatives are not delays either.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


class Backoff(wait_base):
    """``initial * 2**(attempt-1)`` capped at ``maximum``, times a factor in ``[1 - jitter, 1]``."""

    def __init__(self, initial: float = INITIAL, maximum: float = MAX_BACKOFF, *, jitter: float = 0.5,
                 rand: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.rand = rand

    def __call__(self, retry_state: RetryCallState) -> float:
        exponent = max(0, retry_state.attempt_number - 1)
        try:
            base = min(self.maximum, self.initial * 2.0**exponent)
        except OverflowError:  # an outage of more than ~1000 retries: the cap has long been reached
            base = self.maximum
        return base * (1.0 - self.jitter * self.rand())


class RetryAfterWait(wait_base):
    """The server's delay (:func:`server_delay` of the last error), capped at ``maximum``; else ``fallback``."""

    def __init__(self, fallback: wait_base, maximum: float = MAX_BACKOFF) -> None:
        self.fallback = fallback
        self.maximum = maximum

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        delay = server_delay(outcome.exception()) if outcome is not None and outcome.failed else None
        if delay is not None:
            return min(self.maximum, delay)
        return float(self.fallback(retry_state))


def policy_wait(initial: float = INITIAL, maximum: float = MAX_BACKOFF) -> wait_base:
    """The project's wait: the server's delay when it gave one, else :class:`Backoff`; both capped."""
    return RetryAfterWait(Backoff(initial, maximum), maximum)


def describe_error(exc: BaseException) -> str:
    """How an error is named in retry log lines: its type and message."""
    return f"{type(exc).__name__}: {exc}"


def _before_sleep(what: str, logger: logging.Logger, on_retry: OnRetry | None,
                  describe: Callable[[BaseException], str]) -> Callable[[RetryCallState], None]:
    def hook(state: RetryCallState) -> None:
        # Called only when another attempt follows, after the wait has been chosen.
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is None:  # pragma: no cover - the policy retries on exceptions only
            return
        attempt = state.attempt_number
        if on_retry is not None:
            on_retry(exc, attempt)
        level = logging.WARNING if attempt == 1 or attempt % LOUD_EVERY == 0 else logging.DEBUG
        error = describe(exc)
        logger.log(level, "%s: %s; retrying in %.2f s", what, error, state.upcoming_sleep,
                   extra={"attempt": attempt, "error": error, "backoff_s": round(state.upcoming_sleep, 3)})
    return hook


def retrying(*, retry_on: tuple[type[BaseException], ...], what: str, initial: float = INITIAL,
             max_backoff: float = MAX_BACKOFF, max_attempts: int | None = None, max_time: float | None = None,
             on_retry: OnRetry | None = None, wait: wait_base | None = None, logger: logging.Logger = log,
             describe: Callable[[BaseException], str] = describe_error, sleep: Sleep | None = None) -> AsyncRetrying:
    """The policy as a tenacity :class:`~tenacity.AsyncRetrying` (use it as ``await r(op)`` or
    ``async for attempt in r``). Only ``retry_on`` errors are retried; anything else is raised at once.
    Once ``max_attempts`` attempts or ``max_time`` seconds are spent, the last error is raised as it is.

    ``wait`` replaces :func:`policy_wait` (a caller with errors that need no wait wraps it);
    ``sleep`` replaces :func:`asyncio.sleep` (tests); ``describe`` renders an error for the log
    (the oracle's scrubs its API key).
    """
    stop: stop_base = stop_never
    if max_attempts is not None:
        stop = stop | stop_after_attempt(max_attempts)
    if max_time is not None:
        stop = stop | stop_after_delay(max_time)
    return AsyncRetrying(
        sleep=sleep or asyncio.sleep,
        stop=stop,
        wait=wait if wait is not None else policy_wait(initial, max_backoff),
        retry=retry_if_exception_type(retry_on),
        before_sleep=_before_sleep(what, logger, on_retry, describe),
        # Give up with the error itself, not tenacity's RetryError: callers route it by its type.
        reraise=True,
    )


async def retry_forever(op: Callable[[], Awaitable[T]], *, retry_on: tuple[type[BaseException], ...], what: str,
                        initial: float = INITIAL, max_backoff: float = MAX_BACKOFF, on_retry: OnRetry | None = None,
                        logger: logging.Logger = log, describe: Callable[[BaseException], str] = describe_error,
                        sleep: Sleep | None = None) -> T:
    """Run ``op`` until it succeeds, waiting by the policy after each ``retry_on`` error (infrastructure:
    a stage that cannot reach Redis or Kafka waits, which is its backpressure, rather than drop work)."""
    policy = retrying(retry_on=retry_on, what=what, initial=initial, max_backoff=max_backoff, on_retry=on_retry,
                      logger=logger, describe=describe, sleep=sleep)
    result: T = await policy(op)
    return result


async def retry_bounded(op: Callable[[], Awaitable[T]], *, retry_on: tuple[type[BaseException], ...], what: str,
                        max_attempts: int | None = None, max_time: float | None = None, initial: float = INITIAL,
                        max_backoff: float = MAX_BACKOFF, on_retry: OnRetry | None = None,
                        wait: wait_base | None = None, logger: logging.Logger = log,
                        describe: Callable[[BaseException], str] = describe_error, sleep: Sleep | None = None) -> T:
    """Like :func:`retry_forever`, but after ``max_attempts`` attempts (counting the first) or ``max_time``
    seconds it raises the last error."""
    if max_attempts is None and max_time is None:
        raise ValueError("a bounded retry needs max_attempts or max_time")
    policy = retrying(retry_on=retry_on, what=what, initial=initial, max_backoff=max_backoff,
                      max_attempts=max_attempts, max_time=max_time, on_retry=on_retry, wait=wait, logger=logger,
                      describe=describe, sleep=sleep)
    result: T = await policy(op)
    return result


__all__ = ["INITIAL", "LOUD_EVERY", "MAX_BACKOFF", "Backoff", "OnRetry", "RetryAfterWait", "describe_error",
           "policy_wait", "retry_bounded", "retry_forever", "retrying", "server_delay"]
