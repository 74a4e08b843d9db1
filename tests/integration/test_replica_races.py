"""Races between replicas and between maintenance and admission, on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.model.jobs import JobRef
from controller.model.phases import Phase
from controller.runtime.app import App
from controller.runtime.status import StatusWriter
from tests.integration.conftest import RecordingCluster, SameStore, new_ref, succeeded

pytestmark = pytest.mark.integration


class SlowPatches(SameStore):
    """The same store as `inner`, reached over a slow link: patches land late."""

    def __init__(self, inner: RecordingCluster, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay

    async def patch_status(self, ref: JobRef, status: dict[str, Any]) -> bool:
        await asyncio.sleep(self.delay)
        return await super().patch_status(ref, status)


async def test_late_stale_patch_from_another_replica_is_repaired(app: App, cluster: RecordingCluster) -> None:
    ref = new_ref("raced")
    await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    replica_b = StatusWriter(
        ledger=app.ledger, kube=SlowPatches(cluster, 0.5), metrics=app.metrics, flush_seconds=0, concurrency=4
    )
    stale = asyncio.create_task(replica_b.flush([ref.uid]))  # reads Queued now, patches it late
    await asyncio.sleep(0.1)
    (row,) = (await app.ledger.start_attempts([str(ref.uid)])).started
    await app.ledger.record_outcomes([succeeded(row)], {ref.uid: row.spec})
    await app.status.flush([ref.uid])  # replica A writes Completed first...
    assert cluster.status[ref.uid]["phase"] == "Completed"
    await stale  # ...then B's Queued lands on top of it
    flusher = asyncio.create_task(replica_b.run())
    try:
        await asyncio.wait_for(replica_b.wait_idle(), 5)
    finally:
        flusher.cancel()
    assert cluster.status[ref.uid]["phase"] == "Completed"


class StaleList(SameStore):
    """A list that answers with the RelayJobs that existed when it was asked, after a delay."""

    def __init__(self, inner: RecordingCluster, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay

    async def list_job_uids(self, namespaces: Any) -> set[Any]:
        snapshot = set(self.jobs)
        await asyncio.sleep(self.delay)
        return snapshot


async def test_reconcile_never_cancels_a_job_admitted_during_it(app: App, cluster: RecordingCluster) -> None:
    app.maintenance.kube = StaleList(cluster, 0.3)
    rebuild = asyncio.create_task(app.maintenance.rebuild())
    await asyncio.sleep(0.1)
    ref = new_ref("just-created")
    await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    await rebuild
    row = await app.ledger.get(ref.uid)
    assert row is not None and not row.deleted and row.phase is Phase.QUEUED


async def test_redis_failure_after_the_ledger_commit_still_reports_the_outcome(
    app: App, cluster: RecordingCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failing between the ledger commit and the Redis update must not make the worker
    record the outcome twice: the second ledger write is fenced out and the status never moved."""
    import redis.exceptions

    from tests.integration.conftest import eventually, running

    real_ack = app.queue.ack
    failures = iter([redis.exceptions.ConnectionError("injected: Redis went away")])

    async def flaky_ack(*args: Any, **kwargs: Any) -> None:
        for error in failures:
            raise error
        await real_ack(*args, **kwargs)

    monkeypatch.setattr(app.queue, "ack", flaky_ack)
    ref = new_ref("flaky")
    async with running(app):
        await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))

        async def completed() -> bool:
            return cluster.status.get(ref.uid, {}).get("phase") == "Completed"

        await eventually(completed, timeout=15)

        async def left_redis() -> bool:
            return await app.queue.members() == set()

        await eventually(left_redis, timeout=15)
    assert app.metrics.fenced._value.get() == 0


async def test_status_writer_outlives_postgresql_shutting_down(
    app: App, cluster: RecordingCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL restart made the status loop's ledger read raise CannotConnectNowError, which
    killed the loop and with it the operator (fault suite, 'postgres restart')."""
    import asyncpg

    real_get_many = app.ledger.get_many
    failures = iter([asyncpg.CannotConnectNowError("the database system is shutting down")])

    async def flaky_get_many(uids: Any) -> Any:
        for error in failures:
            raise error
        return await real_get_many(uids)

    monkeypatch.setattr(app.ledger, "get_many", flaky_get_many)
    ref = new_ref("restart")
    await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    loop = asyncio.create_task(app.status.run())
    try:
        await asyncio.wait_for(app.status.wait_idle(), 10)
    finally:
        loop.cancel()
    assert not loop.done() or loop.cancelled()
    assert cluster.status[ref.uid]["phase"] == "Queued"
