"""RelayQueue flow control in Redis, against a real redis-server: rate limits, concurrency caps and
pause holding across two replicas (two `Queue`s on two clients), fairness by weight, and slots
that are given back by every path that ends a lease.

Most tests drive the claim with a clock they advance themselves, so a rate is counted exactly, not
measured against a busy machine's scheduler; one checks the same limit on the wall clock."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from controller.adapters.queue import Placement, Queue, QueueLimits, connect
from controller.core.scoring import ready_score

pytestmark = pytest.mark.integration

START_MS = 1_800_000_000_000
LEASE_MS = 60_000
A, B, DEFAULT = "team/a", "team/b", "team/default"


@pytest.fixture
async def replicas(redis_server: object, key_prefix: str) -> AsyncIterator[tuple[Queue, Queue]]:
    """Two operator processes' views of one Redis: separate clients, separate script caches."""
    first = connect(redis_server.url, 4, 5)  # type: ignore[attr-defined]
    second = connect(redis_server.url, 4, 5)  # type: ignore[attr-defined]
    yield Queue(first, key_prefix), Queue(second, key_prefix)
    await first.aclose()
    await second.aclose()


@pytest.fixture
async def queue(replicas: tuple[Queue, Queue]) -> Queue:
    return replicas[0]


def jobs(qid: str, n: int, first: int = 0, priority: int = 0) -> list[Placement]:
    return [Placement(f"{qid}#{i}", ready_score(priority, i), 0, qid) for i in range(first, first + n)]


def queue_of(uid: str) -> str:
    return uid.split("#", 1)[0]


async def running(queue: Queue, qid: str) -> int:
    depths = await queue.queue_depths()
    return depths[qid].running if qid in depths else 0


async def test_a_rate_limit_holds_across_two_replicas_second_by_second(replicas: tuple[Queue, Queue]) -> None:
    first, second = replicas
    await first.configure(A, QueueLimits(per_second=5, burst=1))
    await first.place(jobs(A, 200), START_MS)
    per_second: Counter[int] = Counter()
    # Both replicas claim every 10 ms of a simulated 10 s, far more often than the rate allows.
    for now in range(START_MS, START_MS + 10_000, 10):
        for replica in (first, second) if now % 20 else (second, first):
            claimed = await replica.claim(10, now, LEASE_MS)
            per_second[(now - START_MS) // 1000] += len(claimed.uids)
    assert [per_second[s] for s in range(10)] == [5] * 10


async def test_a_rate_limit_holds_on_the_wall_clock(replicas: tuple[Queue, Queue]) -> None:
    await replicas[0].configure(A, QueueLimits(per_second=5, burst=1))
    await replicas[0].place(jobs(A, 100), int(time.time() * 1000))
    began = time.monotonic()

    async def claimer(queue: Queue) -> int:
        got = 0
        while time.monotonic() - began < 1.5:
            got += len((await queue.claim(10, int(time.time() * 1000), LEASE_MS)).uids)
            await asyncio.sleep(0.005)
        return got

    counts = await asyncio.gather(*(claimer(q) for q in replicas))
    elapsed_ms = (time.monotonic() - began) * 1000
    # One start at once (the burst), then one per 200 ms of the time the claims actually ran.
    assert sum(counts) <= 1 + int(elapsed_ms // 200)
    assert sum(counts) >= 7


async def test_a_burst_starts_at_once_then_the_rate_applies(queue: Queue) -> None:
    await queue.configure(A, QueueLimits(per_second=2, burst=4))
    await queue.place(jobs(A, 20), START_MS)
    assert len((await queue.claim(10, START_MS, LEASE_MS)).uids) == 4
    held_back = await queue.claim(10, START_MS + 100, LEASE_MS)
    assert held_back.uids == [] and held_back.throttled == {A: 1}
    assert held_back.retry_at_ms == START_MS + 500
    assert len((await queue.claim(10, START_MS + 500, LEASE_MS)).uids) == 1


async def test_a_changed_rate_applies_at_once_and_the_same_one_again_changes_nothing(queue: Queue) -> None:
    await queue.configure(A, QueueLimits(per_second=0.1))
    await queue.place(jobs(A, 20), START_MS)
    assert len((await queue.claim(10, START_MS, LEASE_MS)).uids) == 1
    await queue.configure(A, QueueLimits(per_second=0.1))  # a reconcile: the next start is 10 s away
    assert (await queue.claim(10, START_MS + 5000, LEASE_MS)).uids == []
    await queue.configure(A, QueueLimits(per_second=10))
    assert len((await queue.claim(10, START_MS + 5000, LEASE_MS)).uids) == 1
    assert len((await queue.claim(10, START_MS + 5100, LEASE_MS)).uids) == 1


async def test_max_concurrency_holds_across_two_replicas(replicas: tuple[Queue, Queue]) -> None:
    first, second = replicas
    await first.configure(A, QueueLimits(max_concurrency=3))
    await first.place(jobs(A, 20), START_MS)
    took = await first.claim(2, START_MS, LEASE_MS)
    other = await second.claim(10, START_MS, LEASE_MS)
    assert len(took.uids) == 2 and len(other.uids) == 1
    refused = await first.claim(10, START_MS, LEASE_MS)
    assert refused.uids == [] and refused.throttled == {A: 1} and refused.retry_at_ms is None
    assert await running(first, A) == 3
    await second.ack(done=other.uids)
    assert len((await first.claim(10, START_MS, LEASE_MS)).uids) == 1
    assert await running(second, A) == 3


async def test_a_paused_queue_claims_nothing_then_everything_after_resume(
    replicas: tuple[Queue, Queue],
) -> None:
    first, second = replicas
    await first.configure(A, QueueLimits(paused=True))
    await first.place(jobs(A, 50), START_MS)
    for now in range(START_MS, START_MS + 1000, 100):
        for replica in replicas:
            claimed = await replica.claim(10, now, LEASE_MS)
            assert claimed.uids == [] and claimed.throttled == {A: 1}
    await second.configure(A, QueueLimits(paused=False))
    got = [uid for _ in range(5) for uid in (await first.claim(10, START_MS + 2000, LEASE_MS)).uids]
    assert sorted(got) == sorted(p.uid for p in jobs(A, 50))


async def test_jobs_in_flight_keep_their_slots_through_a_pause(queue: Queue) -> None:
    await queue.configure(A, QueueLimits(max_concurrency=2))
    await queue.place(jobs(A, 5), START_MS)
    leased = (await queue.claim(10, START_MS, LEASE_MS)).uids
    await queue.configure(A, QueueLimits(max_concurrency=2, paused=True))
    await queue.renew(leased, START_MS + 2 * LEASE_MS)
    assert await running(queue, A) == 2
    await queue.ack(done=leased)
    assert await running(queue, A) == 0
    assert (await queue.claim(10, START_MS, LEASE_MS)).uids == []


async def test_a_small_queue_is_not_delayed_by_a_large_backlog(queue: Queue) -> None:
    await configure_plain(queue, A, B)
    await queue.place(jobs(A, 20_000), START_MS)
    await queue.place(jobs(B, 10), START_MS + 1)
    taken: Counter[str] = Counter()
    for _ in range(20_000 // 5 // 10):
        if taken[B] == 10:
            break
        claimed = await queue.claim(10, START_MS + 2, LEASE_MS)
        taken.update(queue_of(uid) for uid in claimed.uids)
        assert claimed.dispatched == dict(Counter(queue_of(uid) for uid in claimed.uids))
    assert taken[B] == 10 and taken[A] < 20_000 // 5
    assert taken[A] <= 12  # a claim round or two of A's jobs, not thousands


async def test_queues_share_claims_by_weight(queue: Queue) -> None:
    await queue.configure(A, QueueLimits(weight=2))
    await queue.configure(B, QueueLimits(weight=1))
    await queue.place(jobs(A, 500) + jobs(B, 500), START_MS)
    taken: Counter[str] = Counter()
    for _ in range(30):
        taken.update(queue_of(uid) for uid in (await queue.claim(10, START_MS, LEASE_MS)).uids)
    assert abs(taken[A] - 200) <= 2 and abs(taken[B] - 100) <= 2


async def test_a_queue_that_was_idle_banks_no_credit(queue: Queue) -> None:
    await configure_plain(queue, A, B)
    await queue.place(jobs(A, 2000), START_MS)
    for _ in range(100):
        await queue.claim(10, START_MS, LEASE_MS)  # A alone: 1,000 claimed
    await queue.place(jobs(B, 100), START_MS)
    taken: Counter[str] = Counter()
    for _ in range(4):
        taken.update(queue_of(uid) for uid in (await queue.claim(10, START_MS, LEASE_MS)).uids)
    assert abs(taken[A] - taken[B]) <= 2


async def test_a_resumed_queue_banks_no_credit_from_its_pause(queue: Queue) -> None:
    await configure_plain(queue, B)
    await queue.configure(A, QueueLimits(paused=True))
    await queue.place(jobs(A, 500) + jobs(B, 2000), START_MS)
    for _ in range(100):
        await queue.claim(10, START_MS, LEASE_MS)  # B alone while A waits: 1,000 claimed
    await queue.configure(A, QueueLimits())
    taken: Counter[str] = Counter()
    for _ in range(4):
        taken.update(queue_of(uid) for uid in (await queue.claim(10, START_MS, LEASE_MS)).uids)
    assert abs(taken[A] - taken[B]) <= 2


async def test_priority_then_fifo_hold_within_each_queue(queue: Queue) -> None:
    await configure_plain(queue, A, B)
    high = [Placement(f"{A}#high-{i}", ready_score(50, 100 + i), 0, A) for i in range(3)]
    await queue.place(jobs(A, 3) + jobs(B, 3), START_MS)
    await queue.place(high, START_MS)
    order: list[str] = []
    for _ in range(9):
        order += (await queue.claim(1, START_MS, LEASE_MS)).uids
    mine = [uid for uid in order if queue_of(uid) == A]
    assert mine == [p.uid for p in high] + [p.uid for p in jobs(A, 3)]
    assert [uid for uid in order if queue_of(uid) == B] == [p.uid for p in jobs(B, 3)]


async def test_an_unconfigured_queue_claims_nothing_until_configured(queue: Queue) -> None:
    await queue.place(jobs(A, 3) + jobs(DEFAULT, 3), START_MS)
    claimed = await queue.claim(10, START_MS, LEASE_MS)
    # The namespace's default queue needs no configuration; another queue does.
    assert sorted(claimed.uids) == sorted(p.uid for p in jobs(DEFAULT, 3))
    assert claimed.throttled == {}
    await queue.configure(A, QueueLimits())
    assert len((await queue.claim(10, START_MS, LEASE_MS)).uids) == 3


async def test_an_unconfigured_queue_keeps_its_jobs_waiting(queue: Queue) -> None:
    await queue.configure(A, QueueLimits())
    await queue.place(jobs(A, 4), START_MS)
    assert len((await queue.claim(1, START_MS, LEASE_MS)).uids) == 1
    await queue.unconfigure(A)
    assert (await queue.claim(10, START_MS, LEASE_MS)).uids == []
    assert (await queue.queue_depths())[A].ready == 3
    await queue.configure(A, QueueLimits())
    assert len((await queue.claim(10, START_MS, LEASE_MS)).uids) == 3


async def test_a_configured_default_queue_obeys_its_limits(queue: Queue) -> None:
    await queue.configure(DEFAULT, QueueLimits(max_concurrency=1))
    await queue.place(jobs(DEFAULT, 3), START_MS)
    assert len((await queue.claim(10, START_MS, LEASE_MS)).uids) == 1


async def test_ack_nack_and_remove_give_slots_back(queue: Queue) -> None:
    await queue.configure(A, QueueLimits(max_concurrency=5))
    await queue.place(jobs(A, 10), START_MS)
    a, b, c, d, e = (await queue.claim(10, START_MS, LEASE_MS)).uids
    assert await running(queue, A) == 5
    await queue.ack(done=[a])
    assert await running(queue, A) == 4
    await queue.ack(retry=[(b, START_MS + 1000)], dead=[(c, START_MS)])
    assert await running(queue, A) == 2
    await queue.nack([d])
    assert await running(queue, A) == 1
    await queue.remove([e])
    assert await running(queue, A) == 0
    depths = (await queue.queue_depths())[A]
    assert (depths.ready, depths.delayed, depths.running) == (6, 1, 0)
    assert len((await queue.claim(10, START_MS, LEASE_MS)).uids) == 5


async def test_an_expired_lease_gives_its_slot_back(replicas: tuple[Queue, Queue]) -> None:
    dying, survivor = replicas
    await dying.configure(A, QueueLimits(max_concurrency=1))
    await dying.place(jobs(A, 2), START_MS)
    assert len((await dying.claim(1, START_MS, 1000)).uids) == 1
    assert (await survivor.claim(1, START_MS + 500, 1000)).uids == []
    # The replica holding the slot was killed: nobody renews; its lease runs out.
    assert len(await survivor.reap(START_MS + 1000)) == 1
    assert await running(survivor, A) == 0
    assert len((await survivor.claim(2, START_MS + 1000, 1000)).uids) == 1


async def test_a_lease_that_ran_out_frees_its_slot_before_any_reaper_runs(
    replicas: tuple[Queue, Queue],
) -> None:
    dying, survivor = replicas
    await dying.configure(A, QueueLimits(max_concurrency=1))
    await dying.place(jobs(A, 2), START_MS)
    (held,) = (await dying.claim(1, START_MS, 1000)).uids
    assert (await survivor.claim(1, START_MS + 999, 1000)).uids == []
    (taken,) = (await survivor.claim(1, START_MS + 1000, 1000)).uids
    assert taken != held
    # The reaper, when it comes, queues the lost job again; its slot was counted once.
    assert await survivor.reap(START_MS + 1000) == [held]
    await assert_slots_are_the_leases(survivor, [A])


async def test_slots_equal_the_leased_jobs_whatever_happens(queue: Queue) -> None:
    """Random claims, renewals, outcomes, hand-backs, removals, reaps, re-placements and queue
    changes: after each, every queue's slot count is exactly its leased jobs."""
    rnd = random.Random(18)
    qids = [A, B, DEFAULT]
    for qid in qids:
        await queue.configure(qid, QueueLimits(max_concurrency=7))
    everyone = [p for qid in qids for p in jobs(qid, 40)]
    await queue.place(everyone, START_MS)
    now = START_MS
    for _ in range(300):
        now += rnd.randint(0, 400)
        leased = await queue.client.zrange(queue.leased, 0, -1)
        some = rnd.sample(leased, min(len(leased), rnd.randint(0, 3)))
        step = rnd.choice(
            ["claim", "claim", "renew", "done", "retry", "dead", "nack", "remove", "reap", "move"]
        )
        if step == "claim":
            await queue.claim(rnd.randint(1, 6), now, rnd.choice([500, 2000]))
        elif step == "renew":
            await queue.renew(some, now + 1000)
        elif step == "done":
            await queue.ack(done=some)
        elif step == "retry":
            await queue.ack(retry=[(uid, now + 300) for uid in some])
        elif step == "dead":
            await queue.ack(dead=[(uid, now) for uid in some])
        elif step == "nack":
            await queue.nack(some)
        elif step == "remove":
            await queue.remove(rnd.sample([p.uid for p in everyone], 2))
        elif step == "reap":
            await queue.reap(now)
        else:
            moved = rnd.sample(everyone, 3)
            await queue.place([Placement(p.uid, p.score, 0, rnd.choice(qids)) for p in moved], now)
        await assert_slots_are_the_leases(queue, qids)


async def test_a_lease_renewed_after_redis_lost_everything_gets_its_slot_back_on_rebuild(
    queue: Queue,
) -> None:
    await queue.configure(A, QueueLimits(max_concurrency=1))
    await queue.place(jobs(A, 2), START_MS)
    (running_uid,) = (await queue.claim(1, START_MS, LEASE_MS)).uids
    await queue.client.flushall()
    # The worker's heartbeat re-creates the lease; the queue's limits and jobs come back from the
    # RelayQueue's reconcile and the ledger's rebuild.
    await queue.renew([running_uid], START_MS + LEASE_MS)
    await queue.configure(A, QueueLimits(max_concurrency=1))
    assert await queue.place(jobs(A, 2), START_MS, only_missing=True) == 1
    assert await running(queue, A) == 1
    assert (await queue.claim(1, START_MS, LEASE_MS)).uids == []
    await assert_slots_are_the_leases(queue, [A])


async def test_one_claim_can_take_thousands_from_one_queue(queue: Queue) -> None:
    await queue.place(jobs(DEFAULT, 2500), START_MS)
    claimed = await queue.claim(2500, START_MS, LEASE_MS)
    assert len(set(claimed.uids)) == 2500 and claimed.dispatched == {DEFAULT: 2500}
    await assert_slots_are_the_leases(queue, [DEFAULT])


async def test_the_rebuild_moves_jobs_delayed_before_queues_existed_into_their_queue(queue: Queue) -> None:
    # What a release before queues left: a delayed uid and its score, no queue.
    await queue.client.zadd(queue.delayed, {"old": START_MS + 1000})
    await queue.client.hset(queue.score, "old", 7)
    assert (
        await queue.place([Placement("old", 7, START_MS + 1000, DEFAULT)], START_MS, only_missing=True) == 1
    )
    assert (await queue.queue_depths())[DEFAULT].delayed == 1
    assert (await queue.claim(10, START_MS + 1000, LEASE_MS)).uids == ["old"]


async def test_depths_and_dispatch_rate_per_queue(queue: Queue) -> None:
    await queue.configure(A, QueueLimits())
    await queue.configure(B, QueueLimits(paused=True))
    await queue.place(jobs(A, 30) + jobs(B, 2), START_MS)
    await queue.place([Placement("later", 0, START_MS + 60_000, A)], START_MS)
    for second in range(0, 60, 10):
        await queue.claim(2, START_MS + second * 1000, LEASE_MS)
    depths = await queue.queue_depths()
    assert (depths[A].ready, depths[A].delayed, depths[A].running) == (18, 1, 12)
    assert (depths[B].ready, depths[B].running) == (2, 0)
    rates = await queue.dispatched_per_second([A, B], now_ms=START_MS + 60_000)
    assert rates[B] == 0 and rates[A] == pytest.approx(12 / 60, abs=2 / 60)
    assert (await queue.dispatched_per_second([A], now_ms=START_MS + 200_000))[A] == 0


async def test_a_queue_with_nothing_left_drops_out_of_the_depths(queue: Queue) -> None:
    await queue.place(jobs(DEFAULT, 1), START_MS)
    (uid,) = (await queue.claim(1, START_MS, LEASE_MS)).uids
    assert DEFAULT in await queue.queue_depths()
    await queue.ack(done=[uid])
    assert DEFAULT not in await queue.queue_depths()
    assert await queue.members() == set()


async def configure_plain(queue: Queue, *qids: str) -> None:
    for qid in qids:
        await queue.configure(qid, QueueLimits())


async def assert_slots_are_the_leases(queue: Queue, qids: list[str]) -> None:
    leased = dict(await queue.client.zrange(queue.leased, 0, -1, withscores=True))
    for qid in qids:
        slots = dict(await queue.client.zrange(queue.running_key(qid), 0, -1, withscores=True))
        owned = {uid: at for uid, at in leased.items() if await queue.client.hget(queue.queue_of, uid) == qid}
        assert slots == owned, qid
