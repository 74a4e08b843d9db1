"""Waiting out failures: one throttle for every loop that retries after an error.

`Throttle` holds the pause between tries, in seconds: `first_seconds` after a failure, doubled
after each further failure up to `max_seconds`, and back to `first_seconds` after a success (a
pause already begun still runs out). `throttled` runs one try under a throttle, as kopf's
`throttlers.throttled()` does: an error of the given types is logged with the pause it causes,
counted in `relayjob_loop_errors_total{loop=...}` and swallowed; any other error propagates.

`until_done` retries an operation that way until it succeeds. It is used where giving up would
lose work that nothing else re-delivers, such as a watch event whose admission met Redis,
PostgreSQL or the API server down (kopf does not re-deliver `on.event`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import asyncpg
import redis.exceptions

from controller.adapters.kube import KubeError
from controller.adapters.metrics import Metrics

# Failures that pass when a server comes back. Anything else (a value PostgreSQL cannot store, a
# bug) would fail forever, so it is not retried here.
OUTAGE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.InterfaceError,
    # asyncpg can hand out a pooled connection that a server shutdown broke mid-operation
    # (MagicStack/asyncpg#1069): the next query on it fails this way, and a retry gets a new one.
    asyncpg.exceptions.InternalClientError,
    KubeError,
    OSError,
    TimeoutError,
)
# For loops that keep what they are working on while they wait (outcomes, leases, dirty
# statuses): any error from a server is waited out, since giving up would stop the process.
TRANSIENT = (*OUTAGE, redis.exceptions.RedisError, asyncpg.PostgresError)

T = TypeVar("T")
log = logging.getLogger("relayjob.retry")


class Throttle:
    """The pause between tries of something that fails: capped exponential, reset by a success."""

    def __init__(self, first_seconds: float, max_seconds: float) -> None:
        self.first_seconds = first_seconds
        self.max_seconds = max_seconds
        self.next_seconds = first_seconds  # the pause the next failure causes
        self.active = False  # the last try failed
        self._until = 0.0  # time.monotonic() at which the pause of the last failure ends

    def failed(self) -> float:
        """Count a failure: returns the pause it causes, in seconds, and doubles the next one."""
        pause = self.next_seconds
        self.active = True
        self._until = time.monotonic() + pause
        self.next_seconds = min(pause * 2, self.max_seconds)
        return pause

    def succeeded(self) -> None:
        self.active = False
        self.next_seconds = self.first_seconds

    def remaining(self) -> float:
        """Seconds left of the pause the last failure caused; 0.0 when it is over."""
        return max(0.0, self._until - time.monotonic())

    async def pause(self, wakeup: asyncio.Event | None = None) -> None:
        """Sleep out `remaining()`, or until `wakeup` is set; returns at once when no pause is due."""
        remaining = self.remaining()
        if remaining <= 0:
            return
        if wakeup is None:
            await asyncio.sleep(remaining)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await wakeup.wait()


@contextlib.asynccontextmanager
async def throttled(
    throttle: Throttle,
    metrics: Metrics,
    loop: str,
    *,
    what: str | None = None,
    errors: tuple[type[BaseException], ...] = TRANSIENT,
    extra: Mapping[str, object] | None = None,
    logger: logging.Logger = log,
) -> AsyncIterator[None]:
    """One try of loop `loop`: the block's `errors` are swallowed, logged to `logger` as "`what`
    failed" (`what` defaults to `loop`) and counted under `loop`, and the throttle pauses; a block
    that ends without an error resets the throttle. A swallowed error outside TRANSIENT is a bug,
    logged at ERROR with its traceback."""
    try:
        yield
    except errors as error:
        pause = throttle.failed()
        fields = dict(extra or {})
        if isinstance(error, TRANSIENT):
            logger.warning("%s failed, retrying in %.1fs: %s", what or loop, pause, error, extra=fields)
        else:
            logger.exception("%s failed, retrying in %.1fs", what or loop, pause, extra=fields)
        metrics.errors.labels(loop).inc()
    else:
        throttle.succeeded()


async def until_done(
    action: Callable[[], Awaitable[T]],
    what: str,
    metrics: Metrics,
    first_delay: float = 0.2,
    max_delay: float = 10.0,
    extra: Mapping[str, object] | None = None,
    retry_on: tuple[type[BaseException], ...] = OUTAGE,
) -> T:
    """`action()`'s result, after as many tries as it takes while it raises `retry_on` (pauses in
    seconds: `first_delay`, doubled up to `max_delay`). Any other error propagates at once."""
    throttle = Throttle(first_delay, max_delay)
    while True:
        async with throttled(throttle, metrics, what, errors=retry_on, extra=extra):
            return await action()
        await throttle.pause()
