"""Claiming: leases taken no faster than slots free up, attempts opened, and whatever opening finds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import asyncpg

from controller.adapters.metrics import Metrics
from controller.adapters.queue import Claimed
from controller.model.jobs import JobRow
from controller.model.phases import Phase
from controller.runtime.worker.announcing import Announcer
from controller.runtime.worker.capacity import Capacity
from controller.runtime.worker.claiming import Claiming
from controller.runtime.worker.executing import Attempts, EndedAttempt
from controller.runtime.worker.leases import Leases
from controller.runtime.worker.settling import SETTLE_BATCH, Settling
from tests.unit.fakes import (
    FakeCallbacks,
    FakeEvents,
    FakeLedger,
    FakeQueue,
    FakeStatus,
    ScriptedExecutor,
    job_row,
    until,
)


class Stage:
    """Claiming wired to real stages and fake adapters. Settling does not run: outcomes wait."""

    def __init__(
        self,
        rows: list[JobRow],
        concurrency: int = 2,
        claim_batch: int = 8,
        queue: FakeQueue | None = None,
        poll_interval_seconds: float = 0.02,
    ) -> None:
        self.rows = rows
        self.queue = queue or FakeQueue(str(r.ref.uid) for r in rows)
        self.ledger = FakeLedger(rows)
        self.metrics = Metrics()
        self.leases = Leases(queue=self.queue, metrics=self.metrics, lease_seconds=30)
        self.capacity = Capacity(concurrency=concurrency, claim_batch=claim_batch)
        self.status, self.events, self.callbacks = FakeStatus(), FakeEvents(), FakeCallbacks()
        announcer = Announcer(events=self.events, metrics=self.metrics, callbacks=self.callbacks)
        self.settling = Settling(
            ledger=self.ledger,
            queue=self.queue,
            leases=self.leases,
            status=self.status,
            announcer=announcer,
            metrics=self.metrics,
            grace_seconds=25,
        )
        self.executor = ScriptedExecutor()
        self.attempts = Attempts(
            executors={"noop": self.executor},
            concurrency=concurrency,
            capacity=self.capacity,
            leases=self.leases,
            ended=self.settling.put,
            metrics=self.metrics,
        )
        self.claiming = Claiming(
            queue=self.queue,
            ledger=self.ledger,
            leases=self.leases,
            capacity=self.capacity,
            attempts=self.attempts,
            settling=self.settling,
            status=self.status,
            announcer=announcer,
            metrics=self.metrics,
            lease_seconds=30,
            poll_interval_seconds=poll_interval_seconds,
        )

    @contextlib.asynccontextmanager
    async def claiming_loop(self) -> AsyncIterator[asyncio.Task[None]]:
        task = asyncio.create_task(self.claiming.run())
        try:
            yield task
        finally:
            self.claiming.stop()
            await asyncio.wait_for(task, 5)
            await asyncio.gather(*self.claiming.opening, *self.attempts.running, return_exceptions=True)

    def phase(self, row: JobRow) -> Phase:
        return self.ledger.rows[row.ref.uid].phase


def queued(n: int) -> list[JobRow]:
    return [job_row(Phase.QUEUED) for _ in range(n)]


class RateLimitedQueue(FakeQueue):
    """Redis with one rate-limited queue: a start every `period_ms`; a claim before the next is due
    gets nothing, and is told when it is."""

    def __init__(self, rows: list[JobRow], period_ms: int) -> None:
        super().__init__(str(r.ref.uid) for r in rows)
        self.period_ms = period_ms
        self.starts: list[int] = []

    async def claim(self, n: int, now_ms: int, lease_ms: int) -> Claimed:
        due = self.starts[-1] + self.period_ms if self.starts else now_ms
        if now_ms < due:
            self.claims.append(n)
            return Claimed([], {}, {"ns/limited": 1}, due)
        self.starts.append(now_ms)
        uids = (await super().claim(1, now_ms, lease_ms)).uids
        return Claimed(uids, {"ns/limited": len(uids)}, {})


async def test_every_queued_job_is_claimed_opened_and_run() -> None:
    stage = Stage(queued(5))
    async with stage.claiming_loop():
        await until(lambda: len(stage.executor.seen) == 5)
    assert all(stage.phase(r) is Phase.PROCESSING for r in stage.rows)
    assert stage.metrics.attempts._value.get() == 5
    assert {r.ref.uid for r in stage.status.offered} == {r.ref.uid for r in stage.rows}


async def test_a_rate_limited_queue_is_claimed_again_when_its_next_start_is_due_not_at_the_poll() -> None:
    rows = queued(6)
    period_ms = 200
    stage = Stage(rows, queue=RateLimitedQueue(rows, period_ms), poll_interval_seconds=5.0)
    async with stage.claiming_loop():
        await until(lambda: len(stage.executor.seen) == 6, timeout=10)
    starts = stage.queue.starts  # type: ignore[attr-defined]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    # The idle back-off alone (5 ms, doubling) would come back 315 ms after each start.
    assert sum(gaps) / len(gaps) < period_ms * 1.3, gaps
    assert stage.metrics.queue_dispatches.labels("ns", "limited")._value.get() == 6
    assert stage.metrics.queue_throttled.labels("ns", "limited")._value.get() >= 5


async def test_a_claim_never_asks_for_more_than_claim_batch_even_with_short_jobs() -> None:
    stage = Stage(queued(60), concurrency=50, claim_batch=8)
    for _ in range(200):
        stage.capacity.took(0.001)  # jobs of 1 ms: the prefetch would take 5000 ahead
    async with stage.claiming_loop():
        await until(lambda: not stage.queue.ready)
    assert stage.queue.claims and max(stage.queue.claims) <= 8


async def test_no_more_is_claimed_than_the_free_slots_take_while_jobs_are_slow() -> None:
    stage = Stage(queued(10), concurrency=2)
    stage.executor.hold()
    async with stage.claiming_loop():
        await until(lambda: len(stage.executor.seen) == 2)
        await asyncio.sleep(0.05)
        assert len(stage.queue.leased) == 2 and len(stage.queue.ready) == 8
        stage.executor.go()


async def test_a_batch_the_ledger_cannot_open_is_handed_back_and_claimed_again() -> None:
    stage = Stage(queued(2))
    stage.ledger.fail("start_attempts", asyncpg.exceptions.CannotConnectNowError("injected: restarting"))
    async with stage.claiming_loop():
        await until(lambda: len(stage.executor.seen) == 2)
    assert stage.queue.calls[:3] == ["claim", "nack", "claim"]
    assert stage.queue.claims[:2] == [2, 2]  # the second claim got the jobs the first handed back
    assert stage.metrics.errors.labels("claim")._value.get() == 1
    assert stage.capacity.open_count == 0  # both attempts ended, and the failed batch gave its room back


async def test_stale_ids_are_removed_and_counted_without_stopping_the_loop() -> None:
    stage = Stage(queued(1))
    stage.queue.ready.append("7b1e9a4e-0000-4000-8000-000000000000")  # no ledger row
    async with stage.claiming_loop():
        await until(lambda: len(stage.executor.seen) == 1 and "remove" in stage.queue.calls)
    assert stage.metrics.stale._value.get() == 1
    assert set(stage.queue.leased) == {str(stage.rows[0].ref.uid)}


async def test_a_job_whose_lost_lease_used_its_last_attempt_is_dead_lettered_and_announced() -> None:
    (row,) = rows = [job_row(Phase.PROCESSING, attempts=2, maxAttempts=2)]  # its worker died
    stage = Stage(rows)
    async with stage.claiming_loop():
        await until(lambda: str(row.ref.uid) in stage.queue.dead)
    assert stage.phase(row) is Phase.DEAD_LETTERED and stage.executor.seen == []
    assert stage.queue.leased == {} and stage.leases.held == frozenset()
    assert [r.phase for r in stage.status.offered] == [Phase.DEAD_LETTERED]
    assert [reason for _, _, reason, _ in stage.events.posted] == ["DeadLettered"]


async def test_a_job_suspended_while_its_lost_attempt_ran_leaves_redis_and_is_announced() -> None:
    (row,) = rows = [job_row(Phase.PROCESSING, attempts=1).model_copy(update={"suspend": True})]
    stage = Stage(rows)
    async with stage.claiming_loop():
        await until(lambda: "remove" in stage.queue.calls)
    assert stage.phase(row) is Phase.SUSPENDED and stage.queue.leased == {}
    assert [reason for _, _, reason, _ in stage.events.posted] == ["Suspended"]


async def test_nothing_new_is_opened_while_a_batch_of_outcomes_waits_to_be_recorded() -> None:
    stage = Stage(queued(1))
    for row in [job_row(Phase.PROCESSING, attempts=1) for _ in range(SETTLE_BATCH)]:
        stage.settling.put(EndedAttempt(row, None, 0.0))
    async with stage.claiming_loop():
        await asyncio.sleep(0.05)
        assert stage.queue.claims == []


async def test_after_stop_nothing_is_claimed_and_the_work_leased_ahead_is_handed_back() -> None:
    stage = Stage(queued(20), concurrency=1, claim_batch=8)
    for _ in range(200):
        stage.capacity.took(0.001)  # short jobs: work is leased ahead of the one slot
    stage.ledger.hold("start_attempts")
    async with stage.claiming_loop() as loop:
        await until(lambda: len(stage.queue.claims) == 2)
        await asyncio.sleep(0.02)
        stage.claiming.stop()
        stage.ledger.resume("start_attempts")
        await asyncio.wait_for(loop, 5)
        claims = len(stage.queue.claims)
        handed_back = await stage.claiming.hand_back_leased_ahead()
        assert handed_back > 0 and len(stage.queue.claims) == claims
        # Nothing claimed is lost: it is either being opened (held) or back in `ready`.
        assert stage.leases.held == set(stage.queue.leased)
        assert len(stage.queue.ready) + len(stage.queue.leased) == 20
