"""The project's one retry policy (scoring.retry): its waits, its bounds, its hook and its log lines.

Sleeps are injected, so nothing here waits: each test checks the wait the policy chose, not the clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tenacity import RetryCallState
from tenacity.wait import wait_fixed

from scoring.retry import (
    Backoff,
    RetryAfterWait,
    policy_wait,
    retry_bounded,
    retry_forever,
    retrying,
    server_delay,
)


class Busy(Exception):
    """A transient error; ``retry_after`` is what a server's Retry-After would set."""

    def __init__(self, n: int = 0, retry_after: Any = None) -> None:
        super().__init__(f"busy #{n}")
        self.retry_after = retry_after


class Fatal(Exception):
    pass


def failed(exc: BaseException, attempt: int) -> RetryCallState:
    state = RetryCallState(None, None, (), {})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def flaky(failures: list[BaseException], result: str = "ok") -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An operation that raises ``failures`` in turn, then returns ``result``; counts its calls."""
    calls: list[int] = []

    async def op() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    return op, calls


class Sleeps:
    """An injected sleep that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# ------------------------------------------------------------------------------------------- waits

def test_backoff_doubles_from_initial_and_is_capped() -> None:
    top = Backoff(0.05, 5.0, rand=lambda: 0.0)  # no jitter drawn: the upper end
    assert [top(failed(Busy(), n)) for n in range(1, 10)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert top(failed(Busy(), 5000)) == 5.0  # no overflow after a very long outage


def test_backoff_jitter_stays_between_half_and_all_of_the_step() -> None:
    assert Backoff(1.0, 60.0, rand=lambda: 1.0)(failed(Busy(), 3)) == 2.0
    for _ in range(200):
        assert 2.0 <= Backoff(1.0, 60.0)(failed(Busy(), 3)) <= 4.0


def test_the_servers_delay_is_the_wait_capped() -> None:
    wait = policy_wait(0.05, 5.0)
    assert wait(failed(Busy(retry_after=1.5), 1)) == 1.5  # not jittered, not the 0.05 of backoff
    assert wait(failed(Busy(retry_after=0), 7)) == 0.0
    assert wait(failed(Busy(retry_after=3600), 1)) == 5.0  # capped: one answer cannot park a worker


@pytest.mark.parametrize("value", [None, -1.0, float("nan"), float("inf"), "3", True])
def test_without_a_usable_server_delay_the_wait_is_exponential(value: Any) -> None:
    assert server_delay(Busy(retry_after=value)) is None
    wait = RetryAfterWait(Backoff(0.5, 60.0, rand=lambda: 0.0), 60.0)
    assert wait(failed(Busy(retry_after=value), 3)) == 2.0
    assert RetryAfterWait(wait_fixed(7), 60.0)(failed(ValueError("no attribute"), 1)) == 7.0


# ------------------------------------------------------------------------------------------ forever

def test_retry_forever_waits_by_the_policy_until_it_succeeds() -> None:
    op, calls = flaky([Busy(1), Busy(2, retry_after=0.7), Busy(3)])
    sleeps, seen = Sleeps(), []
    result = asyncio.run(retry_forever(op, retry_on=(Busy,), what="Redis", initial=1.0, max_backoff=60.0,
                                       on_retry=lambda exc, n: seen.append((str(exc), n)), sleep=sleeps))
    assert result == "ok" and calls == [1, 2, 3, 4]
    assert seen == [("busy #1", 1), ("busy #2", 2), ("busy #3", 3)]
    first, second, third = sleeps.waits
    assert 0.5 <= first <= 1.0 and second == 0.7 and 2.0 <= third <= 4.0


def test_only_the_named_errors_are_retried() -> None:
    op, calls = flaky([Busy(1), Fatal("no")])
    with pytest.raises(Fatal):
        asyncio.run(retry_forever(op, retry_on=(Busy,), what="x", sleep=Sleeps()))
    assert calls == [1, 2]


def test_retry_forever_does_not_give_up() -> None:
    op, calls = flaky([Busy(n) for n in range(60)])
    sleeps = Sleeps()
    assert asyncio.run(retry_forever(op, retry_on=(Busy,), what="x", max_backoff=0.2, sleep=sleeps)) == "ok"
    assert len(calls) == 61 and max(sleeps.waits) <= 0.2


def test_warning_on_the_first_retry_and_every_20th_debug_otherwise(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.retry")
    caplog.set_level(logging.DEBUG, logger="tests.retry")
    op, _ = flaky([Busy(n) for n in range(41)])
    asyncio.run(retry_forever(op, retry_on=(Busy,), what="Kafka", logger=logger, sleep=Sleeps()))
    loud = [r.attempt for r in caplog.records if r.levelno == logging.WARNING]
    quiet = [r.attempt for r in caplog.records if r.levelno == logging.DEBUG]
    assert loud == [1, 20, 40]
    assert len(quiet) == 41 - 3
    first = caplog.records[0]
    assert first.getMessage().startswith("Kafka: Busy: busy #0; retrying in ")
    assert first.error == "Busy: busy #0" and first.backoff_s >= 0


def test_describe_renders_the_error_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fluxscore.retry")
    op, _ = flaky([Busy(1)])
    asyncio.run(retry_forever(op, retry_on=(Busy,), what="api", describe=lambda e: "scrubbed", sleep=Sleeps()))
    assert caplog.records[0].getMessage().startswith("api: scrubbed; retrying in")


# ------------------------------------------------------------------------------------------ bounded

def test_bounded_gives_up_with_the_last_error_after_max_attempts() -> None:
    op, calls = flaky([Busy(1), Busy(2), Busy(3), Busy(4)])
    sleeps, seen = Sleeps(), []
    with pytest.raises(Busy, match="busy #3"):
        asyncio.run(retry_bounded(op, retry_on=(Busy,), what="oracle", max_attempts=3,
                                  on_retry=lambda exc, n: seen.append(n), sleep=sleeps))
    assert calls == [1, 2, 3]
    assert seen == [1, 2] and len(sleeps.waits) == 2  # no hook and no wait after the last attempt


def test_bounded_succeeds_within_its_attempts() -> None:
    op, calls = flaky([Busy(1, retry_after=0.25)])
    sleeps = Sleeps()
    assert asyncio.run(retry_bounded(op, retry_on=(Busy,), what="x", max_attempts=2, sleep=sleeps)) == "ok"
    assert sleeps.waits == [0.25] and calls == [1, 2]


def test_bounded_by_total_time() -> None:
    # A zero time budget is spent by the first failure, whatever the clock says.
    op, calls = flaky([Busy(1), Busy(2)])
    with pytest.raises(Busy, match="busy #1"):
        asyncio.run(retry_bounded(op, retry_on=(Busy,), what="x", max_time=0.0, sleep=Sleeps()))
    assert calls == [1]


def test_bounded_needs_a_bound() -> None:
    op, _ = flaky([])
    with pytest.raises(ValueError, match="max_attempts or max_time"):
        asyncio.run(retry_bounded(op, retry_on=(Busy,), what="x"))


def test_a_custom_wait_replaces_the_policys() -> None:
    op, _ = flaky([Busy(1, retry_after=9.0), Busy(2)])
    sleeps = Sleeps()
    policy = retrying(retry_on=(Busy,), what="x", max_attempts=3, wait=wait_fixed(0.0), sleep=sleeps)
    assert asyncio.run(policy(op)) == "ok"
    assert sleeps.waits == [0.0, 0.0]


def test_cancellation_is_never_retried() -> None:
    async def op() -> str:
        raise asyncio.CancelledError

    async def run() -> str:
        return await retry_forever(op, retry_on=(Exception,), what="x", sleep=Sleeps())

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())
