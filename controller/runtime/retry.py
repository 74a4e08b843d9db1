"""Waiting out an outage: retry an operation with capped exponential backoff until it succeeds.

Used where giving up would lose work that nothing else re-delivers, such as a watch event whose
admission met Redis, PostgreSQL or the API server down (kopf does not re-deliver `on.event`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
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


async def until_done(
    action: Callable[[], Awaitable[T]],
    what: str,
    metrics: Metrics,
    first_delay: float = 0.2,
    max_delay: float = 10.0,
    extra: Mapping[str, object] | None = None,
    retry_on: tuple[type[BaseException], ...] = OUTAGE,
) -> T:
    delay = first_delay
    while True:
        try:
            return await action()
        except retry_on as error:
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, error, extra=extra or {})
            metrics.errors.labels(what).inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
