"""The throttle every error backoff loop shares, `throttled`, and `until_done`."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.exceptions

from controller.adapters.metrics import Metrics
from controller.runtime.retry import Throttle, throttled, until_done


def errors_counted(metrics: Metrics, loop: str) -> float:
    value: float = metrics.errors.labels(loop)._value.get()
    return value


def test_pauses_double_after_each_failure_up_to_the_cap_and_a_success_starts_over() -> None:
    throttle = Throttle(0.5, 3.0)
    assert [throttle.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    throttle.succeeded()
    assert throttle.failed() == 0.5


def test_the_pause_of_a_failure_counts_down_and_a_success_does_not_cut_it_short() -> None:
    throttle = Throttle(60.0, 60.0)
    assert throttle.remaining() == 0.0 and not throttle.active
    throttle.failed()
    assert 59.0 < throttle.remaining() <= 60.0 and throttle.active
    # Another try of the same loop succeeding (a concurrent batch) resets the next pause only.
    throttle.succeeded()
    assert throttle.remaining() > 59.0 and not throttle.active


async def test_a_pause_ends_early_when_woken() -> None:
    throttle = Throttle(30.0, 30.0)
    throttle.failed()
    wakeup = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, wakeup.set)
    began = time.monotonic()
    await throttle.pause(wakeup)
    assert time.monotonic() - began < 5


async def test_throttled_swallows_the_errors_it_waits_out_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics, throttle = Metrics(), Throttle(0.1, 1.0)
    async with throttled(throttle, metrics, "claim", what="opening attempts"):
        raise redis.exceptions.ConnectionError("injected: Redis went away")
    assert throttle.active and throttle.next_seconds == 0.2
    assert errors_counted(metrics, "claim") == 1
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage() == "opening attempts failed, retrying in 0.1s: injected: Redis went away"


async def test_throttled_logs_a_bug_it_was_told_to_survive_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics, throttle = Metrics(), Throttle(0.1, 1.0)
    async with throttled(throttle, metrics, "claim", errors=(Exception,)):
        raise KeyError("a bug")
    (record,) = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is not None


async def test_throttled_lets_other_errors_through_and_a_success_resets_it() -> None:
    metrics, throttle = Metrics(), Throttle(0.1, 1.0)
    throttle.failed()
    with pytest.raises(ValueError):
        async with throttled(throttle, metrics, "status"):
            raise ValueError("not a server away")
    assert throttle.next_seconds == 0.2
    async with throttled(throttle, metrics, "status"):
        pass
    assert throttle.next_seconds == 0.1 and not throttle.active
    assert errors_counted(metrics, "status") == 0


async def test_until_done_retries_an_outage_with_growing_pauses_until_it_succeeds() -> None:
    metrics, tries = Metrics(), []

    async def flaky() -> str:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise ConnectionRefusedError("injected")
        return "done"

    assert await until_done(flaky, "admission", metrics, first_delay=0.02, max_delay=1.0) == "done"
    assert errors_counted(metrics, "admission") == 2
    first, second = tries[1] - tries[0], tries[2] - tries[1]
    assert first >= 0.02 and second >= 0.04


async def test_until_done_gives_up_at_once_on_an_error_waiting_cannot_fix() -> None:
    async def broken() -> None:
        raise redis.exceptions.ResponseError("WRONGTYPE")  # a RedisError, not an outage

    with pytest.raises(redis.exceptions.ResponseError):
        await until_done(broken, "admission", Metrics(), first_delay=0.01)
