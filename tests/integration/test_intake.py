"""Admission's group commit (runtime.intake) against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID

import pytest

from controller.adapters.ledger import NewJob
from controller.model.jobs import JobRow
from controller.model.phases import Phase
from controller.runtime.app import App
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running

pytestmark = pytest.mark.integration
NOOP = {"target": {"noop": {}}}


def count_batches(app: App) -> list[int]:
    """The size of every batch the intake hands to the ledger, recorded as they happen."""
    sizes: list[int] = []
    ledger = app.admissions.intake.ledger
    inner = ledger.admit_many

    async def admit_many(jobs: Sequence[NewJob]) -> dict[UUID, JobRow]:
        sizes.append(len(jobs))
        return await inner(jobs)

    ledger.admit_many = admit_many  # type: ignore[method-assign]
    return sizes


async def test_a_burst_of_new_jobs_shares_statements(app: App, cluster: RecordingCluster) -> None:
    sizes = count_batches(app)
    refs = [new_ref(f"burst-{i}") for i in range(300)]
    await asyncio.gather(*(app.admissions.observe(cluster.body(r, NOOP)) for r in refs))
    assert sum(sizes) == 300 and len(sizes) <= 3, sizes
    rows = await app.ledger.get_many([r.uid for r in refs])
    assert {rows[r.uid].phase for r in refs} == {Phase.QUEUED}
    assert (await app.queue.depth()).ready == 300
    # Recorded rows reach the worker and the status writer as they would one by one.
    async with running(app):

        async def all_completed() -> bool:
            return all(cluster.status.get(r.uid, {}).get("phase") == "Completed" for r in refs)

        await eventually(all_completed, timeout=30)


async def test_a_lone_job_is_not_held_back(app: App, cluster: RecordingCluster) -> None:
    sizes = count_batches(app)
    ref = new_ref("alone")
    await asyncio.wait_for(app.admissions.observe(cluster.body(ref, NOOP)), timeout=5)
    assert sizes == [1]
    assert (await app.queue.depth()).ready == 1


async def test_an_unstorable_spec_does_not_hold_back_its_batch(app: App, cluster: RecordingCluster) -> None:
    good = [new_ref(f"good-{i}") for i in range(5)]
    bad = new_ref("bad")
    # Passes the spec's checks (only the CRD's int32 format bounds it), and the ledger's int4 refuses it.
    unstorable = {"target": {"noop": {}}, "ttlSecondsAfterFinished": 2**40}
    bodies = [cluster.body(r, NOOP) for r in good] + [cluster.body(bad, unstorable)]
    await asyncio.gather(*(app.admissions.observe(b) for b in bodies))
    rows = await app.ledger.get_many([*(r.uid for r in good), bad.uid])
    assert {rows[r.uid].phase for r in good} == {Phase.QUEUED}
    assert rows[bad.uid].phase is Phase.REJECTED
    assert "cannot be stored" in (rows[bad.uid].message or "")
    assert (await app.queue.depth()).ready == 5
