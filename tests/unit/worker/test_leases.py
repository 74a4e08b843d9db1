"""Leases held in Redis: renewed by the heartbeat, ended under the lease lock, never brought back."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from controller.adapters.metrics import Metrics
from controller.runtime.clock import epoch_ms
from controller.runtime.worker.leases import Leases
from tests.unit.fakes import FakeQueue, in_background, until

OUTAGE = redis.exceptions.ConnectionError("injected: Redis went away")


def leases(queue: FakeQueue, metrics: Metrics | None = None, lease_seconds: float = 30.0) -> Leases:
    return Leases(queue=queue, metrics=metrics or Metrics(), lease_seconds=lease_seconds)


async def claimed(queue: FakeQueue, held: Leases, n: int) -> list[str]:
    uids = (await queue.claim(n, epoch_ms(), 1_000)).uids
    held.hold(uids)
    return uids


async def test_a_renewal_never_re_adds_a_lease_handed_back_meanwhile() -> None:
    queue = FakeQueue(["a", "b"])
    held = leases(queue)
    await claimed(queue, held, 2)
    queue.hold("renew")
    renewal = asyncio.create_task(held.renew())
    await queue.entered["renew"].wait()  # the ZADD is on its way with "a" in it
    handing_back = asyncio.create_task(held.end_or_lapse(["a"], lambda: queue.nack(["a"])))
    await asyncio.sleep(0.01)
    assert not handing_back.done()  # waits for the renewal: its nack must land after the ZADD
    queue.resume("renew")
    await renewal
    await handing_back
    assert set(queue.leased) == {"b"} and list(queue.ready) == ["a"]
    await held.renew()
    assert set(queue.leased) == {"b"}


async def test_a_renewal_never_re_adds_a_lease_acked_meanwhile() -> None:
    queue = FakeQueue(["a"])
    held = leases(queue)
    await claimed(queue, held, 1)
    queue.hold("renew")
    renewal = asyncio.create_task(held.renew())
    await queue.entered["renew"].wait()
    acking = asyncio.create_task(held.end(["a"], lambda: queue.ack(done=["a"])))
    queue.resume("renew")
    await asyncio.gather(renewal, acking)
    assert queue.leased == {} and held.held == frozenset()
    await held.renew()
    assert queue.leased == {}


async def test_a_failed_end_keeps_the_lease_held_and_renewed() -> None:
    queue = FakeQueue(["a"])
    held = leases(queue)
    await claimed(queue, held, 1)
    queue.fail("ack", OUTAGE)
    with pytest.raises(redis.exceptions.ConnectionError):
        await held.end(["a"], lambda: queue.ack(done=["a"]))
    assert held.held == {"a"}
    before = queue.leased["a"]
    await held.renew()
    assert queue.leased["a"] > before
    await held.end(["a"], lambda: queue.ack(done=["a"]))
    assert held.held == frozenset() and queue.leased == {}


async def test_a_lease_that_cannot_be_handed_back_is_left_to_lapse_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue, metrics = FakeQueue(["a"]), Metrics()
    held = leases(queue, metrics)
    await claimed(queue, held, 1)
    queue.fail("nack", OUTAGE)
    await held.end_or_lapse(["a"], lambda: queue.nack(["a"]))
    assert held.held == frozenset() and "a" in queue.leased  # no longer renewed: it lapses
    assert metrics.errors.labels("release")._value.get() == 1
    assert "returning 1 leases failed; they will lapse" in caplog.text


async def test_the_heartbeat_renews_every_held_lease_and_outlives_a_failed_beat() -> None:
    queue, metrics = FakeQueue(["a", "b", "c"]), Metrics()
    held = leases(queue, metrics, lease_seconds=0.06)  # a beat every 20 ms
    await claimed(queue, held, 3)
    claimed_until = dict(queue.leased)
    held.drop("c")  # an attempt that ends unrecorded: its lease lapses
    queue.fail("renew", OUTAGE)
    async with in_background(held.heartbeat()):
        await until(lambda: queue.calls.count("renew") >= 3)
    assert metrics.errors.labels("heartbeat")._value.get() == 1
    assert queue.leased["a"] == queue.leased["b"] != claimed_until["a"]
    assert queue.leased["c"] == claimed_until["c"]


async def test_nothing_is_sent_while_no_lease_is_held() -> None:
    queue = FakeQueue()
    await leases(queue).renew()
    assert queue.calls == []
