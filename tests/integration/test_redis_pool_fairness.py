"""The one Redis client's pool hands connections out first come, first served, against a real
redis-server: a task looping over commands must not keep its connection from the tasks waiting."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from redis.asyncio.client import Redis

from controller.adapters.queue import FairBlockingConnectionPool, _BlockingSentinelPool, connect

pytestmark = pytest.mark.integration


async def test_tasks_looping_on_a_small_pool_all_get_their_turn(redis_server: object) -> None:
    client: Redis = connect(redis_server.url, 2, 1.0)  # type: ignore[attr-defined]
    done: Counter[int] = Counter()
    errors: list[str] = []
    longest = 0.0
    stop = time.monotonic() + 2.0

    async def loop(task: int) -> None:
        nonlocal longest
        while time.monotonic() < stop:
            began = time.monotonic()
            try:
                await client.ping()
                done[task] += 1
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
            longest = max(longest, time.monotonic() - began)

    try:
        await asyncio.gather(*(loop(task) for task in range(8)))
    finally:
        await client.aclose()

    # redis-py's own pool: two tasks ran thousands of commands, six none, each failing with
    # "No connection available." after the 1 s timeout.
    assert errors == []
    assert len(done) == 8
    assert min(done.values()) > max(done.values()) / 3, done
    assert longest < 0.5


def test_the_sentinel_primarys_pool_is_the_fair_one_too() -> None:
    assert issubclass(_BlockingSentinelPool, FairBlockingConnectionPool)
