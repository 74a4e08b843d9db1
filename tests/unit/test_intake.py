"""Admission's group commit, on a fake ledger and queue: a burst shares one INSERT and one placement."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg
import pytest

from controller.adapters.ledger import NewJob
from controller.adapters.queue import Placement
from controller.model.jobs import JobRef, JobRow
from controller.model.phases import Phase, Reason
from controller.model.spec import RelayJobSpec
from controller.runtime.intake import BATCH_LIMIT, Intake
from tests.unit.fakes import FakeLedger, FakeQueue


def new_job(phase: Phase = Phase.QUEUED) -> NewJob:
    raw: dict[str, Any] = {"target": {"noop": {}}}
    return NewJob(
        ref=JobRef(uid=uuid.uuid4(), namespace="ns", name="job"),
        spec=RelayJobSpec.model_validate(raw),
        raw_spec=raw,
        generation=1,
        phase=phase,
        reason=Reason.ADMITTED if phase is Phase.QUEUED else Reason.SUSPENDED,
        message="queued",
        next_attempt_at=None,
    )


class Stage:
    def __init__(self) -> None:
        self.ledger, self.queue = FakeLedger(), FakeQueue()
        self.shown: list[JobRow] = []
        self.intake = Intake(self.ledger, self.queue, self.placement, self.placed)

    @staticmethod
    def placement(row: JobRow) -> Placement:
        return Placement(str(row.ref.uid), 0, 0, row.queue_id)

    def placed(self, rows: Iterable[JobRow]) -> None:
        self.shown.extend(rows)


async def test_a_lone_job_is_recorded_at_once_and_placed() -> None:
    stage = Stage()
    job = new_job()
    row = await stage.intake.record(job)
    assert row is not None and row.ref == job.ref
    assert list(stage.queue.ready) == [str(job.ref.uid)] and stage.shown == [row]


async def test_a_burst_shares_statements_and_every_caller_gets_its_own_row() -> None:
    stage = Stage()
    jobs = [new_job() for _ in range(BATCH_LIMIT + 100)]
    rows = await asyncio.gather(*(stage.intake.record(job) for job in jobs))
    assert [r.ref for r in rows if r is not None] == [job.ref for job in jobs]
    assert [len(batch) for batch in stage.ledger.admitted] == [BATCH_LIMIT, 100]
    assert len(stage.queue.placed) == 2 and len(stage.queue.ready) == len(jobs)


async def test_only_queued_rows_are_placed() -> None:
    stage = Stage()
    queued, suspended = new_job(), new_job(Phase.SUSPENDED)
    rows = await asyncio.gather(stage.intake.record(queued), stage.intake.record(suspended))
    assert all(r is not None for r in rows)
    assert list(stage.queue.ready) == [str(queued.ref.uid)] and len(stage.shown) == 2


async def test_a_job_the_batch_did_not_create_is_answered_none() -> None:
    stage = Stage()
    job = new_job()
    assert await stage.intake.record(job) is not None
    assert await stage.intake.record(job) is None  # recorded before: `Ledger.admit` decides


async def test_an_unstorable_spec_in_a_batch_leaves_every_job_to_be_admitted_alone() -> None:
    stage = Stage()
    stage.ledger.fail("admit_many", asyncpg.DataError("unsupported Unicode escape sequence"))
    assert await asyncio.gather(*(stage.intake.record(new_job()) for _ in range(3))) == [None] * 3
    assert stage.queue.placed == []


async def test_a_failed_batch_raises_its_error_in_every_caller() -> None:
    stage = Stage()
    stage.queue.fail("place", ConnectionRefusedError("injected: Redis away"))
    answers = await asyncio.gather(
        *(stage.intake.record(new_job()) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(a, ConnectionRefusedError) for a in answers)
    assert stage.shown == []
    assert await stage.intake.record(new_job()) is not None  # the next batch goes on


async def test_callers_waiting_when_the_operator_stops_are_cancelled() -> None:
    stage = Stage()
    stage.ledger.hold("admit_many")
    first = asyncio.create_task(stage.intake.record(new_job()))
    await stage.ledger.entered["admit_many"].wait()
    second = asyncio.create_task(stage.intake.record(new_job()))
    await asyncio.sleep(0)
    assert stage.intake._recording is not None
    stage.intake._recording.cancel()
    for waiting in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await waiting
