"""The worker as its stages compose it: run, wake, cancel, drain and abandon, on fake adapters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from controller.adapters.metrics import Metrics
from controller.model.jobs import JobRow
from controller.model.phases import AttemptOutcome, Phase, Reason
from controller.runtime.worker import Worker
from controller.settings import Settings
from tests.unit.fakes import (
    FakeCallbacks,
    FakeEvents,
    FakeLedger,
    FakeQueue,
    FakeStatus,
    ScriptedExecutor,
    in_background,
    job_row,
    until,
)


class Process:
    """One worker over fake Redis, ledger, status writer and Events, with queued noop jobs."""

    def __init__(
        self, n: int, poll_interval_seconds: float = 0.02, shutdown_grace_seconds: float = 25
    ) -> None:
        self.rows = [job_row(Phase.QUEUED) for _ in range(n)]
        self.queue = FakeQueue(str(r.ref.uid) for r in self.rows)
        self.ledger = FakeLedger(self.rows)
        self.status, self.events, self.metrics = FakeStatus(), FakeEvents(), Metrics()
        self.executor = ScriptedExecutor()
        self.worker = Worker(
            settings=Settings(
                concurrency=2,
                lease_seconds=1,
                poll_interval_seconds=poll_interval_seconds,
                shutdown_grace_seconds=shutdown_grace_seconds,
            ),
            queue=self.queue,
            ledger=self.ledger,
            executors={"noop": self.executor},
            status=self.status,
            events=self.events,
            metrics=self.metrics,
            callbacks=FakeCallbacks(),
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        try:
            async with in_background(self.worker.run()):
                yield
        finally:
            await self.worker.abandon()

    def phases(self) -> list[Phase]:
        return [self.ledger.rows[r.ref.uid].phase for r in self.rows]

    def add(self, row: JobRow) -> None:
        self.rows.append(row)
        self.ledger.rows[row.ref.uid] = row
        self.queue.ready.append(str(row.ref.uid))


async def test_queued_jobs_are_claimed_run_recorded_and_acked() -> None:
    process = Process(5)
    async with process.running():
        await until(lambda: process.phases() == [Phase.COMPLETED] * 5 and not process.queue.leased)
    assert process.queue.ready == type(process.queue.ready)()
    assert [reason for _, _, reason, _ in process.events.posted] == ["Completed"] * 5


async def test_a_wake_up_claims_new_work_at_once_instead_of_at_the_next_poll() -> None:
    process = Process(0, poll_interval_seconds=30)
    async with process.running():
        await asyncio.sleep(0.1)  # idle: the claim loop now waits up to the 30 s poll interval
        process.add(job_row(Phase.QUEUED))
        process.worker.wake()
        await until(lambda: process.phases() == [Phase.COMPLETED], timeout=2)


async def test_a_deleted_job_s_attempt_is_cancelled_unrecorded() -> None:
    process = Process(1)
    process.executor.hold()
    async with process.running():
        await until(lambda: len(process.executor.seen) == 1)
        assert process.worker.cancel(process.rows[0].ref.uid)
        await asyncio.sleep(0.05)
    assert process.ledger.recorded == [] and process.phases() == [Phase.PROCESSING]


async def test_a_drain_lets_attempts_finish_within_the_grace_and_records_them() -> None:
    process = Process(2)
    process.executor.seconds = 0.1
    async with process.running():
        await until(lambda: len(process.executor.seen) == 2)
        now = time.monotonic()
        await process.worker.drain(grace_ends=now + 5, gives_up=now + 10)
        assert process.phases() == [Phase.COMPLETED] * 2
        assert process.queue.leased == {}
        assert time.monotonic() - now < 2


async def test_a_drain_cuts_off_attempts_past_the_grace_and_records_them_as_such() -> None:
    process = Process(1, shutdown_grace_seconds=0.1)
    process.executor.hold()
    async with process.running():
        await until(lambda: len(process.executor.seen) == 1)
        now = time.monotonic()
        await process.worker.drain(grace_ends=now + 0.1, gives_up=now + 5)
        (record,) = process.ledger.recorded
        assert record.outcome is AttemptOutcome.LOST and record.reason == Reason.SHUTDOWN_GRACE_EXCEEDED
        assert process.phases() == [Phase.RETRYING] and process.queue.leased == {}


async def test_a_drain_claims_nothing_more() -> None:
    process = Process(0)
    async with process.running():
        now = time.monotonic()
        await process.worker.drain(grace_ends=now + 1, gives_up=now + 2)
        claims = len(process.queue.claims)
        process.add(job_row(Phase.QUEUED))
        process.worker.wake()
        await asyncio.sleep(0.05)
        assert len(process.queue.claims) == claims


async def test_abandon_stops_attempts_unrecorded_and_leaves_their_leases_to_lapse() -> None:
    process = Process(1)
    process.executor.hold()
    async with process.running():
        await until(lambda: len(process.executor.seen) == 1)
        await process.worker.abandon()
        await asyncio.sleep(0.05)
        assert process.ledger.recorded == [] and set(process.queue.leased) == {str(process.rows[0].ref.uid)}
