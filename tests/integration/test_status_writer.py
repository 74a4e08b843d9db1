"""The status writer's flush loop, on a real ledger, against an in-memory API server whose patches
can be held back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import pytest

from controller.adapters.kube import KubeError
from controller.model.jobs import JobRef
from controller.runtime import maintenance
from controller.runtime.app import App
from controller.runtime.status import PIPELINE, StatusWriter
from tests.integration.conftest import RecordingCluster, SameStore, new_ref, succeeded

pytestmark = pytest.mark.integration


class HeldPatches(SameStore):
    """The same store as `inner`; patches of the `held` jobs wait until `release` is set, the
    others land at once."""

    def __init__(self, inner: RecordingCluster, held: UUID | set[UUID]) -> None:
        super().__init__(inner)
        self.held = held if isinstance(held, set) else {held}
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.other_landed = asyncio.Event()
        self._waiting = 0
        self._changed = asyncio.Condition()

    async def held_count(self, count: int) -> None:
        """Until `count` patches are held back."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._waiting >= count)

    async def patch_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        if ref.uid in self.held:
            self.holding.set()
            async with self._changed:
                self._waiting += 1
                self._changed.notify_all()
            await self.release.wait()
            return await super().patch_status(ref, status)
        landed = await super().patch_status(ref, status)
        self.other_landed.set()
        return landed


@asynccontextmanager
async def held_writer(
    app: App, cluster: RecordingCluster, held: JobRef
) -> AsyncIterator[tuple[StatusWriter, HeldPatches]]:
    """A status writer with its loop running and `held`'s first patch under way, held back; the
    loop is cancelled on the way out."""
    api = HeldPatches(cluster, held.uid)
    writer = StatusWriter(ledger=app.ledger, kube=api, metrics=app.metrics, flush_seconds=0, concurrency=4)
    loop = asyncio.create_task(writer.run())
    try:
        writer.mark([held.uid])
        await asyncio.wait_for(api.holding.wait(), 5)
        yield writer, api
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_a_slow_patch_does_not_hold_back_jobs_that_change_after_it(
    app: App, cluster: RecordingCluster
) -> None:
    """Batches were written one at a time: a job that changed while a batch was out waited for that
    batch's slowest patch. Under a loaded API server that turned seconds of patch latency into
    seconds of status lag for every job behind it (e2e bench: p50 5 s from Completed in the ledger
    to Completed on the RelayJob)."""
    slow, later = new_ref("slow"), new_ref("later")
    for ref in (slow, later):
        await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    async with held_writer(app, cluster, slow) as (writer, api):
        writer.mark([later.uid])
        await asyncio.wait_for(api.other_landed.wait(), 5)
        assert slow.uid not in cluster.status
        api.release.set()
        await asyncio.wait_for(writer.wait_idle(), 5)
    assert cluster.status[slow.uid]["phase"] == cluster.status[later.uid]["phase"] == "Queued"
    assert api.patches == {slow.uid: 1, later.uid: 1}


async def test_jobs_behind_as_many_slow_batches_as_the_pipeline_holds_are_still_written(
    app: App, cluster: RecordingCluster
) -> None:
    """A batch kept its place in the pipeline until its slowest patch landed: with that many slow
    patches out, every other job waited for one of them (e2e bench: seconds from Completed in the
    ledger to Completed on the RelayJob). A batch whose rows are read gives its place up."""
    slow = [new_ref(f"slow-{i}") for i in range(PIPELINE)]
    later = new_ref("later")
    for ref in (*slow, later):
        await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    api = HeldPatches(cluster, {ref.uid for ref in slow})
    writer = StatusWriter(ledger=app.ledger, kube=api, metrics=app.metrics, flush_seconds=0, concurrency=8)
    loop = asyncio.create_task(writer.run())
    try:
        for held, ref in enumerate(slow, 1):  # each in a batch of its own
            writer.mark([ref.uid])
            await asyncio.wait_for(api.held_count(held), 5)
        writer.mark([later.uid])
        await asyncio.wait_for(api.other_landed.wait(), 2)
        assert not any(ref.uid in cluster.status for ref in slow)
        api.release.set()
        await asyncio.wait_for(writer.wait_idle(), 5)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert all(cluster.status[ref.uid]["phase"] == "Queued" for ref in (*slow, later))


async def test_a_job_changed_during_its_own_write_is_written_again_after_it(
    app: App, cluster: RecordingCluster
) -> None:
    """A job is in one batch at a time: its newer document waits for the older patch to land, so
    the two never race each other to the API server."""
    ref = new_ref("changing")
    await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    async with held_writer(app, cluster, ref) as (writer, api):
        (row,) = (await app.ledger.start_attempts([str(ref.uid)])).started
        writer.offer([row])
        await asyncio.sleep(0.2)
        assert api.patches.get(ref.uid, 0) == 0  # the Processing document did not overtake
        api.release.set()
        await asyncio.wait_for(writer.wait_idle(), 5)
    assert cluster.status[ref.uid]["phase"] == "Processing"
    assert api.patches[ref.uid] == 2


async def test_a_transition_whose_replica_died_before_patching_is_repaired(
    app: App, cluster: RecordingCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica B wrote `Processing` from its ledger read; replica A then recorded `Completed` and
    was SIGKILLed before its patch. B's check after writing had already passed, and nothing else
    looked at the job again: its RelayJob showed `Processing` for good (fault suite, '2 replicas,
    one SIGKILLed', 1 run in 3 once batches no longer waited 0.2 s)."""
    ref = new_ref("orphaned")
    await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    (row,) = (await app.ledger.start_attempts([str(ref.uid)])).started
    await app.status.flush([ref.uid])  # replica B
    assert cluster.status[ref.uid]["phase"] == "Processing"
    await app.ledger.record_outcomes([succeeded(row)], {ref.uid: row.spec})  # replica A, which then dies
    assert await app.maintenance.repair_statuses() == 0  # A may still be about to patch
    monkeypatch.setattr(maintenance, "STATUS_REPAIR_GRACE_SECONDS", 0.0)
    assert await app.maintenance.repair_statuses() == 1
    loop = asyncio.create_task(app.status.run())
    try:
        await asyncio.wait_for(app.status.wait_idle(), 5)
    finally:
        loop.cancel()
    assert cluster.status[ref.uid]["phase"] == "Completed"
    assert await app.maintenance.repair_statuses() == 0


async def test_stopping_the_loop_stops_its_batches(app: App, cluster: RecordingCluster) -> None:
    """Batches run as tasks of their own; cancelling the loop (shutdown) left them running, patching
    after the process had said it stopped ('Task was destroyed but it is pending' at exit)."""
    ref = new_ref("held")
    await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    async with held_writer(app, cluster, ref):
        pass  # the loop is cancelled with the patch still held
    batches = [t for t in asyncio.all_tasks() if "_flush_batch" in repr(t.get_coro())]
    assert batches == []


class RefusingPatches(SameStore):
    """The same store as `inner`, with an API server that refuses every status as invalid."""

    async def patch_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        raise KubeError(422, '{"reason": "Invalid", "details": {"causes": [{"field": "status"}]}}')


async def test_a_status_refused_for_good_is_not_repaired_over_and_over(
    app: App, cluster: RecordingCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A document the API server refuses as invalid would be refused again: it is logged once,
    and reconciliation does not send it every interval."""
    ref = new_ref("refused")
    await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    writer = StatusWriter(
        ledger=app.ledger, kube=RefusingPatches(cluster), metrics=app.metrics, flush_seconds=0, concurrency=4
    )
    await writer.flush([ref.uid])
    monkeypatch.setattr(maintenance, "STATUS_REPAIR_GRACE_SECONDS", 0.0)
    assert await app.maintenance.repair_statuses() == 0
