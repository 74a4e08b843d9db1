"""Bounded growth: ledger retention removes what is finished and gone, and nothing else."""

from __future__ import annotations

import uuid

import pytest

from controller.model.phases import Phase
from controller.runtime import maintenance
from controller.runtime.app import App
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ledger_retention_days": 1 / 86400})  # one second


async def _rows(app: App, uids: list[uuid.UUID]) -> int:
    return int(await app.pool.fetchval("SELECT count(*) FROM jobs WHERE uid = ANY($1::uuid[])", uids))


async def test_retention_removes_deleted_finished_jobs_and_keeps_live_ones(
    app: App, cluster: RecordingCluster
) -> None:
    noop = {"target": {"noop": {}}}
    done_then_deleted = [new_ref(f"gone-{i}") for i in range(3)]
    suspended_then_deleted = new_ref("suspended-gone")
    done_and_kept = new_ref("done-kept")
    waiting = new_ref("waiting")
    spent_nullifier = new_ref("spent")
    async with running(app):
        for ref in [*done_then_deleted, done_and_kept]:
            await app.admissions.observe(cluster.body(ref, noop))
        await app.admissions.observe(cluster.body(spent_nullifier, {**noop, "nullifier": "order-1"}))
        await app.admissions.observe(cluster.body(suspended_then_deleted, {**noop, "suspend": True}))
        await app.admissions.observe(cluster.body(waiting, {**noop, "suspend": True}))
        finished = [*done_then_deleted, done_and_kept, spent_nullifier]

        async def all_completed() -> bool:
            rows = await app.ledger.get_many([r.uid for r in finished])
            return len(rows) == len(finished) and all(r.phase is Phase.COMPLETED for r in rows.values())

        await eventually(all_completed)
        for ref in [*done_then_deleted, suspended_then_deleted, spent_nullifier]:
            del cluster.jobs[ref.uid]
            await app.admissions.forget(ref.uid)
        gone = [r.uid for r in [*done_then_deleted, suspended_then_deleted]]
        assert await app.pool.fetchval("SELECT count(*) FROM attempts WHERE job_uid = ANY($1)", gone) == 3

        async def pruned() -> bool:
            return await _rows(app, gone) == 0

        await eventually(pruned, timeout=15)
    assert await app.pool.fetchval("SELECT count(*) FROM attempts WHERE job_uid = ANY($1)", gone) == 0
    kept = await app.ledger.get_many([done_and_kept.uid, waiting.uid, spent_nullifier.uid])
    assert {u: r.phase for u, r in kept.items()} == {
        done_and_kept.uid: Phase.COMPLETED,
        waiting.uid: Phase.SUSPENDED,
        spent_nullifier.uid: Phase.COMPLETED,
    }


async def test_retention_works_through_a_backlog_in_small_batches(app: App) -> None:
    backlog = 2 * maintenance.PRUNE_BATCH + 7
    await app.pool.execute(
        "INSERT INTO jobs (uid, namespace, name, spec, phase, max_attempts, finished_at, deleted_at)"
        " SELECT gen_random_uuid(), 'old', 'job-' || i, '{}', 'Completed', 1,"
        " now() - interval '9 days', now() - interval '8 days' FROM generate_series(1, $1) AS i",
        backlog,
    )
    await app.pool.execute(
        "INSERT INTO attempts (job_uid, run, attempt, worker, outcome)"
        " SELECT uid, 1, 1, 'w', 'succeeded' FROM jobs WHERE namespace = 'old'"
    )
    assert await app.maintenance.prune() == backlog
    assert await app.pool.fetchval("SELECT count(*) FROM jobs") == 0
    assert await app.pool.fetchval("SELECT count(*) FROM attempts") == 0


async def test_default_ttl_deletes_a_finished_job_that_sets_none(
    settings: Settings, cluster: RecordingCluster
) -> None:
    configured = settings.model_copy(
        update={"ledger_retention_days": 7.0, "default_ttl_seconds_after_finished": 1}
    )
    app = await App.assemble(configured, cluster, "w-ttl")
    try:
        async with running(app):
            without_ttl, with_ttl = new_ref("no-ttl"), new_ref("own-ttl")
            await app.admissions.observe(cluster.body(without_ttl, {"target": {"noop": {}}}))
            await app.admissions.observe(
                cluster.body(with_ttl, {"target": {"noop": {}}, "ttlSecondsAfterFinished": 3600})
            )
            # A later generation that changes the priority and still sets no TTL keeps the default.
            await app.admissions.observe(
                cluster.body(without_ttl, {"target": {"noop": {}}, "priority": 5}, generation=2)
            )

            async def deleted() -> bool:
                row = await app.ledger.get(without_ttl.uid)
                return without_ttl.uid not in cluster.jobs and row is not None and row.deleted

            await eventually(deleted, timeout=10)
            own = await app.ledger.get(with_ttl.uid)
            assert own is not None and own.phase is Phase.COMPLETED and not own.deleted
            assert with_ttl.uid in cluster.jobs
    finally:
        await app.close()
