"""`spec.activeDeadlineSeconds` in the ledger against a real PostgreSQL: the run's first start sets
the deadline, and a claim after it dead-letters the job (transition expire) instead of starting it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from controller.adapters import ledger as ledger_mod
from controller.adapters.ledger import Ledger, NewJob, OutcomeRecord, RedriveVerdict
from controller.model.jobs import JobRow
from controller.model.phases import AttemptOutcome, Phase, Reason
from controller.model.spec import RelayJobSpec
from tests.integration.conftest import new_ref

pytestmark = pytest.mark.integration


@pytest.fixture
async def ledger(database_url: str) -> Any:
    pool: asyncpg.Pool = await ledger_mod.connect(database_url, 1, 5, 10)
    await ledger_mod.migrate(pool)
    yield Ledger(pool, "w1")
    await pool.close()


async def admitted(ledger: Ledger, **spec: Any) -> JobRow:
    raw = {"target": {"noop": {}}, "maxAttempts": 5, **spec}
    job = NewJob(
        new_ref(), RelayJobSpec.model_validate(raw), raw, 1, Phase.QUEUED, Reason.ADMITTED, "queued", None
    )
    return (await ledger.admit(job)).row


async def started(ledger: Ledger, row: JobRow) -> JobRow:
    (opened,) = (await ledger.start_attempts([str(row.ref.uid)])).started
    return opened


async def retry_now(ledger: Ledger, row: JobRow) -> None:
    retry = OutcomeRecord(
        uid=row.ref.uid,
        fence=row.fence,
        phase=Phase.RETRYING,
        reason=Reason.RETRY_SCHEDULED,
        message="attempt failed; retrying at once",
        outcome=AttemptOutcome.RETRYABLE,
        next_attempt_at=datetime.now(UTC),
    )
    assert await ledger.record_outcomes([retry], {row.ref.uid: row.spec})


async def test_the_first_start_sets_the_deadline_and_later_starts_keep_it(ledger: Ledger) -> None:
    first = await started(ledger, await admitted(ledger, activeDeadlineSeconds=600))
    assert first.deadline_at is not None and first.started_at is not None
    assert first.deadline_at - first.started_at == timedelta(seconds=600)
    await retry_now(ledger, first)
    second = await started(ledger, first)
    assert second.attempts == 2 and second.deadline_at == first.deadline_at
    unbounded = await started(ledger, await admitted(ledger))
    assert unbounded.deadline_at is None


async def test_a_claim_after_the_deadline_dead_letters_instead_of_starting(ledger: Ledger) -> None:
    first = await started(ledger, await admitted(ledger, activeDeadlineSeconds=1, nullifier="order-7"))
    await retry_now(ledger, first)
    await asyncio.sleep(1.2)
    batch = await ledger.start_attempts([str(first.ref.uid)])
    assert batch.started == []
    (dead,) = batch.exhausted
    assert (dead.phase, dead.reason, dead.attempts) == (Phase.DEAD_LETTERED, "DeadlineExceeded", 1)
    assert dead.message is not None and dead.message.startswith(
        "attempt 2 was not started: spec.activeDeadlineSeconds ran out at "
    )
    assert dead.finished_at is not None and dead.next_attempt_at is None
    # Its nullifier is free again, as for any dead-lettered job.
    assert (await admitted(ledger, nullifier="order-7")).phase is Phase.QUEUED


async def test_a_lost_lease_after_the_deadline_closes_the_attempt_and_dead_letters(ledger: Ledger) -> None:
    first = await started(ledger, await admitted(ledger, activeDeadlineSeconds=1))
    await asyncio.sleep(1.2)  # its worker froze; the lease ran out after the deadline
    batch = await Ledger(ledger.pool, "w2").start_attempts([str(first.ref.uid)])
    assert [(r.phase, r.reason) for r in batch.exhausted] == [(Phase.DEAD_LETTERED, "DeadlineExceeded")]
    (attempt,) = await ledger.attempts_of(first.ref.uid)
    assert (attempt["outcome"], attempt["reason"]) == (AttemptOutcome.LOST, Reason.LEASE_EXPIRED)


async def test_a_redriven_job_starts_a_new_deadline(ledger: Ledger) -> None:
    first = await started(ledger, await admitted(ledger, activeDeadlineSeconds=1))
    await retry_now(ledger, first)
    await asyncio.sleep(1.2)
    assert (await ledger.start_attempts([str(first.ref.uid)])).exhausted
    redriven = await ledger.redrive(first.ref.uid, "again")
    assert redriven.verdict is RedriveVerdict.REDRIVEN
    again = await started(ledger, first)
    assert (again.run, again.attempts) == (2, 1)
    assert again.deadline_at is not None and first.deadline_at is not None
    assert again.deadline_at > first.deadline_at
