"""The Redis queue against a real redis-server: ordering, delays, leases, atomic claims."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.client import Redis

from controller.adapters.queue import Placement, Queue, connect
from controller.core.scoring import ready_score

pytestmark = pytest.mark.integration

DEFAULT = "ns/default"


@pytest.fixture
async def queue(redis_server: object, key_prefix: str) -> AsyncIterator[Queue]:
    client: Redis = connect(redis_server.url, 8, 5)  # type: ignore[attr-defined]
    yield Queue(client, key_prefix)
    await client.aclose()


def now_ms() -> int:
    return int(time.time() * 1000)


def job(uid: str, score: int, ready_at_ms: int = 0) -> Placement:
    return Placement(uid, score, ready_at_ms, DEFAULT)


async def claim(queue: Queue, n: int, lease_ms: int) -> list[str]:
    return (await queue.claim(n, now_ms(), lease_ms)).uids


async def test_priority_then_fifo(queue: Queue) -> None:
    items = [("low-1", -5, 1), ("high-2", 50, 2), ("mid-3", 0, 3), ("high-4", 50, 4), ("low-5", -5, 5)]
    await queue.place([job(u, ready_score(p, s), 0) for u, p, s in items], now_ms())
    order = [await claim(queue, 1, 10_000) for _ in items]
    assert [o[0] for o in order] == ["high-2", "high-4", "mid-3", "low-1", "low-5"]


async def test_delayed_jobs_wait_for_their_time(queue: Queue) -> None:
    # The claims give the time they are made at: a wall-clock delay raced a slow machine, where
    # placing and claiming took longer than the delay (CI, PgBouncer pass, Redis Cluster).
    t0 = now_ms()
    await queue.place([job("later", ready_score(100, 1), t0 + 400), job("now", ready_score(0, 2), 0)], t0)
    assert (await queue.claim(10, t0, 10_000)).uids == ["now"]
    assert (await queue.claim(10, t0 + 399, 10_000)).uids == []
    assert (await queue.claim(10, t0 + 400, 10_000)).uids == ["later"]


async def test_expired_lease_returns_to_ready(queue: Queue) -> None:
    t0 = now_ms()  # times given, not slept: see test_delayed_jobs_wait_for_their_time
    await queue.place([job("a", ready_score(0, 1), 0)], t0)
    assert (await queue.claim(1, t0, 100)).uids == ["a"]
    assert await queue.reap(t0 + 99) == []
    assert await queue.reap(t0 + 101) == ["a"]
    assert (await queue.claim(1, t0 + 101, 100)).uids == ["a"]


async def test_renewed_lease_does_not_expire(queue: Queue) -> None:
    t0 = now_ms()
    await queue.place([job("a", ready_score(0, 1), 0)], t0)
    await queue.claim(1, t0, 100)
    await queue.renew(["a"], t0 + 1000)
    assert await queue.reap(t0 + 500) == []


async def test_rebuild_never_duplicates(queue: Queue) -> None:
    await queue.place([job("leased", ready_score(0, 1), 0), job("queued", ready_score(0, 2), 0)], now_ms())
    await claim(queue, 1, 10_000)
    items = [job(u, ready_score(0, i), 0) for i, u in enumerate(["leased", "queued", "lost"])]
    assert await queue.place(items, now_ms(), only_missing=True) == 1
    depth = await queue.depth()
    assert (depth.ready, depth.leased) == (2, 1)


async def test_concurrent_claims_never_share_a_job(queue: Queue) -> None:
    n = 2000
    await queue.place([job(f"j{i}", ready_score(0, i), 0) for i in range(n)], now_ms())

    async def claimer() -> list[str]:
        got: list[str] = []
        while batch := await claim(queue, 7, 60_000):
            got += batch
        return got

    results = await asyncio.gather(*(claimer() for _ in range(8)))
    claimed = [u for r in results for u in r]
    assert len(claimed) == n and len(set(claimed)) == n


async def test_ack_and_remove_leave_nothing_behind(queue: Queue) -> None:
    await queue.place([job(u, ready_score(0, i), 0) for i, u in enumerate("abc")], now_ms())
    await claim(queue, 3, 10_000)
    await queue.ack(done=["a"], retry=[("b", now_ms() + 60_000)], dead=[("c", now_ms())])
    depth = await queue.depth()
    assert (depth.ready, depth.delayed, depth.leased, depth.dead) == (0, 1, 0, 1)
    await queue.remove(["b", "c"])
    assert await queue.depth() == type(depth)(0, 0, 0, 0)
    assert await queue.client.hlen(queue.score) == 0
    assert await queue.client.hlen(queue.queue_of) == 0


async def test_a_nacked_lease_returns_to_ready_in_its_place(queue: Queue) -> None:
    await queue.place([job(u, ready_score(0, i), 0) for i, u in enumerate("abc")], now_ms())
    assert await claim(queue, 2, 60_000) == ["a", "b"]
    await queue.nack(["b", "a", "gone"])
    assert (await queue.depth()).leased == 0
    assert await claim(queue, 3, 60_000) == ["a", "b", "c"]
