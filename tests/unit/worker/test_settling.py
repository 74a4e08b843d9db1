"""Settling: each outcome recorded once, fenced by its attempt, then acked; nothing lost to an outage."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest
import redis.exceptions

from controller.adapters.metrics import Metrics
from controller.model.jobs import ExecutionResult, JobRow, Outcome
from controller.model.phases import AttemptOutcome, Phase, Reason
from controller.runtime.clock import epoch_ms
from controller.runtime.worker.announcing import Announcer
from controller.runtime.worker.executing import EndedAttempt
from controller.runtime.worker.leases import Leases
from controller.runtime.worker.settling import SETTLE_BATCH, Settling
from tests.unit.fakes import (
    FakeCallbacks,
    FakeEvents,
    FakeLedger,
    FakeQueue,
    FakeStatus,
    in_background,
    job_row,
)

SUCCEEDED = ExecutionResult(outcome=Outcome.SUCCEEDED, reason="HTTP200", message="ok")
RETRYABLE = ExecutionResult(outcome=Outcome.RETRYABLE, reason="HTTP503", message="busy")
PERMANENT = ExecutionResult(outcome=Outcome.PERMANENT, reason="HTTP404", message="no such hook")


class Stage:
    """Settling with fakes around it: jobs whose attempt 1 runs, leased in Redis and held here."""

    def __init__(self, n: int = 1, **spec: Any) -> None:
        self.rows = [job_row(Phase.PROCESSING, attempts=1, maxAttempts=3, **spec) for _ in range(n)]
        self.uids = [str(r.ref.uid) for r in self.rows]
        self.ledger = FakeLedger(self.rows)
        self.queue = FakeQueue()
        self.queue.leased = dict.fromkeys(self.uids, epoch_ms() + 30_000)
        self.metrics = Metrics()
        self.leases = Leases(queue=self.queue, metrics=self.metrics, lease_seconds=30)
        self.leases.hold(self.uids)
        self.status, self.events, self.callbacks = FakeStatus(), FakeEvents(), FakeCallbacks()
        self.settling = Settling(
            ledger=self.ledger,
            queue=self.queue,
            leases=self.leases,
            status=self.status,
            announcer=Announcer(events=self.events, metrics=self.metrics, callbacks=self.callbacks),
            metrics=self.metrics,
            grace_seconds=25,
        )

    def end(self, row: JobRow, result: ExecutionResult | None) -> None:
        self.settling.put(EndedAttempt(row, result, seconds=0.01))

    def phase(self, row: JobRow) -> Phase:
        return self.ledger.rows[row.ref.uid].phase

    def running(self) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
        return in_background(self.settling.run())

    async def settled(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.settling.join(), timeout)


async def test_outcomes_are_recorded_and_acked_where_their_phase_sends_them() -> None:
    stage = Stage(3)
    done, retry, dead = stage.rows
    async with stage.running():
        stage.end(done, SUCCEEDED)
        stage.end(retry, RETRYABLE)
        stage.end(dead, PERMANENT)
        await stage.settled()
    assert [stage.phase(r) for r in stage.rows] == [Phase.COMPLETED, Phase.RETRYING, Phase.DEAD_LETTERED]
    assert stage.ledger.calls.count("record_outcomes") == 1  # ended together: one statement
    assert stage.queue.calls == ["ack"]  # and one Redis transaction
    assert stage.queue.leased == {} and stage.leases.held == frozenset()
    next_at = stage.ledger.rows[retry.ref.uid].next_attempt_at
    assert next_at is not None and stage.queue.delayed == {str(retry.ref.uid): epoch_ms(next_at.timestamp())}
    assert set(stage.queue.dead) == {str(dead.ref.uid)}
    assert {r.phase for r in stage.status.offered} == {Phase.COMPLETED, Phase.RETRYING, Phase.DEAD_LETTERED}
    assert sorted(reason for _, _, reason, _ in stage.events.posted) == [
        "Completed",
        "DeadLettered",
        "Retrying",
    ]
    assert [i.outcome for i in stage.ledger.recorded] == [
        AttemptOutcome.SUCCEEDED,
        AttemptOutcome.RETRYABLE,
        AttemptOutcome.PERMANENT,
    ]


async def test_a_batch_that_fails_is_retried_and_keeps_its_leases_meanwhile() -> None:
    stage = Stage()
    (row,) = stage.rows
    stage.ledger.fail("record_outcomes", asyncpg.exceptions.CannotConnectNowError("injected: restarting"))
    stage.ledger.hold("record_outcomes")
    async with stage.running():
        stage.end(row, SUCCEEDED)
        await stage.ledger.entered["record_outcomes"].wait()
        stage.ledger.resume("record_outcomes")
        await asyncio.sleep(0.05)  # the first try failed; the retry waits out its pause
        assert stage.leases.held == {str(row.ref.uid)}  # still renewed: nothing lapses meanwhile
        assert stage.phase(row) is Phase.PROCESSING
        await stage.settled()
    assert stage.phase(row) is Phase.COMPLETED and stage.queue.leased == {}
    assert stage.metrics.errors.labels("settle")._value.get() == 1


async def test_after_the_commit_only_the_redis_ack_is_retried() -> None:
    stage = Stage()
    (row,) = stage.rows
    stage.queue.fail("ack", redis.exceptions.ConnectionError("injected: Redis went away"))
    async with stage.running():
        stage.end(row, SUCCEEDED)
        await stage.settled()
    assert len(stage.ledger.recorded) == 1 and stage.ledger.calls.count("record_outcomes") == 1
    assert stage.queue.calls == ["ack", "ack"] and stage.queue.leased == {}
    assert [r.phase for r in stage.status.offered] == [Phase.COMPLETED]
    assert stage.metrics.errors.labels("settle-redis")._value.get() == 1
    assert stage.metrics.fenced._value.get() == 0


async def test_an_outcome_whose_commit_answer_was_lost_is_found_as_ours_not_fenced() -> None:
    stage = Stage()
    (row,) = stage.rows
    stage.ledger.lose_answer = True
    async with stage.running():
        stage.end(row, SUCCEEDED)
        await stage.settled()
    assert len(stage.ledger.recorded) == 1  # the retry was fenced out by our own outcome...
    assert stage.metrics.fenced._value.get() == 0  # ...and taken for what it is
    assert stage.queue.leased == {} and [r.phase for r in stage.status.offered] == [Phase.COMPLETED]


async def test_an_outcome_fenced_out_by_a_re_claim_is_counted_and_its_lease_ended() -> None:
    stage = Stage()
    (row,) = stage.rows
    # Our lease lapsed, and another worker re-claimed the job and opened attempt 2.
    stage.ledger.rows[row.ref.uid] = row.model_copy(update={"attempts": 2, "version": row.version + 1})
    async with stage.running():
        stage.end(row, SUCCEEDED)
        await stage.settled()
    assert stage.ledger.recorded == [] and stage.metrics.fenced._value.get() == 1
    assert stage.leases.held == frozenset()  # no longer ours to renew
    assert stage.status.offered == [] and stage.events.posted == []


async def test_an_attempt_cut_off_at_shutdown_is_recorded_and_due_again_at_once() -> None:
    stage = Stage()
    (row,) = stage.rows
    async with stage.running():
        stage.end(row, None)
        await stage.settled()
    (record,) = stage.ledger.recorded
    assert record.outcome is AttemptOutcome.LOST and record.reason == Reason.SHUTDOWN_GRACE_EXCEEDED
    assert stage.phase(row) is Phase.RETRYING
    (due,) = stage.queue.delayed.values()
    assert due <= epoch_ms()


async def test_a_full_backlog_holds_back_until_a_batch_is_recorded() -> None:
    stage = Stage(SETTLE_BATCH)
    for row in stage.rows:
        stage.end(row, SUCCEEDED)
    assert stage.settling.full()
    waiting = asyncio.create_task(stage.settling.wait_recorded())
    async with stage.running():
        await asyncio.wait_for(waiting, 5)
        assert not stage.settling.full()
        await stage.settled()


@pytest.mark.parametrize("phase", [Phase.COMPLETED, Phase.SUSPENDED])
async def test_a_finished_or_suspended_job_leaves_redis(phase: Phase) -> None:
    stage = Stage()
    (row,) = stage.rows
    if phase is Phase.SUSPENDED:
        # Suspended while its attempt ran: the ledger holds the retry back.
        stage.ledger.rows[row.ref.uid] = row.model_copy(update={"suspend": True})
    async with stage.running():
        stage.end(row, SUCCEEDED if phase is Phase.COMPLETED else RETRYABLE)
        await stage.settled()
    assert stage.phase(row) is phase
    assert stage.queue.calls == ["ack"] and stage.queue.leased == {} and stage.queue.delayed == {}
