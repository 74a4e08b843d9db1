"""Reconciliation keeps the live set of RelayJobs from the watch: one list of the cluster when a
process starts, none per interval; on real Redis and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

import pytest

from controller.model.phases import Phase
from controller.runtime.app import App
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, SameStore, new_ref

pytestmark = pytest.mark.integration

NOOP: dict[str, Any] = {"target": {"noop": {}}}


class CountedLists(SameStore):
    """The same RelayJobs as `inner`, counting the lists of them."""

    def __init__(self, inner: RecordingCluster) -> None:
        super().__init__(inner)
        self.lists = 0

    async def list_job_uids(self, namespaces: Iterable[str]) -> set[UUID]:
        self.lists += 1
        return await super().list_job_uids(namespaces)


async def _backdate(app: App) -> None:
    """Every job admitted long enough ago for the reconcile to re-queue it."""
    await app.pool.execute("UPDATE jobs SET queued_at = now() - interval '1 minute'")


async def test_a_job_whose_relayjob_vanished_while_no_operator_ran_is_cancelled_at_start(
    app: App, cluster: RecordingCluster, settings: Settings
) -> None:
    ref = new_ref("vanished")
    await app.admissions.observe(cluster.body(ref, NOOP))
    del cluster.jobs[ref.uid]  # deleted while no operator watched: no event will ever come
    restarted = await App.assemble(settings, cluster, "restarted")
    try:
        await restarted.maintenance.rebuild()
        row = await restarted.ledger.get(ref.uid)
        assert row is not None and row.deleted and row.phase is Phase.CANCELLED
        assert (await restarted.queue.depth()).ready == 0
    finally:
        await restarted.close()


async def test_reconcile_lists_the_cluster_once_per_process_not_per_interval(
    app: App, cluster: RecordingCluster
) -> None:
    counted = CountedLists(cluster)
    app.maintenance.kube = counted
    for i in range(3):
        await app.admissions.observe(cluster.body(new_ref(f"job-{i}"), NOOP))
    for _ in range(4):
        await app.maintenance.rebuild()
    assert counted.lists == 1


async def test_a_job_the_watch_delivered_is_requeued_after_redis_lost_it(
    app: App, cluster: RecordingCluster
) -> None:
    await app.maintenance.rebuild()  # the process's first pass, before any job exists
    ref = new_ref("lost-from-redis")
    await app.admissions.observe(cluster.body(ref, NOOP))
    await app.queue.remove([str(ref.uid)])
    await _backdate(app)
    assert await app.maintenance.rebuild() == 1
    assert (await app.queue.depth()).ready == 1


async def test_a_job_deleted_while_the_operator_runs_is_not_requeued(
    app: App, cluster: RecordingCluster
) -> None:
    await app.maintenance.rebuild()
    ref = new_ref("deleted")
    await app.admissions.observe(cluster.body(ref, NOOP))
    del cluster.jobs[ref.uid]
    await app.admissions.forget(ref.uid)  # the watch's DELETED event
    await _backdate(app)
    assert await app.maintenance.rebuild() == 0
    assert (await app.queue.depth()).ready == 0


async def test_a_deletion_the_watch_missed_is_caught_by_the_next_sweep(
    app: App, cluster: RecordingCluster
) -> None:
    counted = CountedLists(cluster)
    app.maintenance.kube = counted
    ref = new_ref("missed-delete")
    await app.admissions.observe(cluster.body(ref, NOOP))
    await app.maintenance.rebuild()  # the process's first pass lists the cluster
    del cluster.jobs[ref.uid]  # deleted during a watch gap: no DELETED event comes
    await app.maintenance.rebuild()
    row = await app.ledger.get(ref.uid)
    assert row is not None and not row.deleted  # within the hour, the watch's live set is trusted
    app.maintenance.sweeps.seconds = 0.0  # an hour later
    await app.maintenance.rebuild()
    row = await app.ledger.get(ref.uid)
    assert row is not None and row.deleted and row.phase is Phase.CANCELLED
    assert counted.lists == 2


async def test_a_status_behind_for_longer_than_the_window_is_repaired_by_the_hourly_pass(
    app: App, cluster: RecordingCluster
) -> None:
    ref = new_ref("long-behind")
    await app.admissions.observe(cluster.body(ref, NOOP))
    await app.maintenance.repair_statuses()  # the process's first pass reads the whole ledger
    # A transition two hours ago whose status never reached the RelayJob.
    await app.pool.execute(
        "UPDATE jobs SET version = status_version + 1, updated_at = now() - interval '2 hours'"
        " WHERE uid = $1",
        ref.uid,
    )
    assert await app.maintenance.repair_statuses() == 0  # outside the window
    app.maintenance.whole_repairs.seconds = 0.0  # an hour later
    assert await app.maintenance.repair_statuses() == 1


def _list_answer(cluster: RecordingCluster) -> dict[str, Any]:
    """The cluster's RelayJobs as one page of kopf's list (cluster-wide, no continue token)."""
    return {
        "kind": "RelayJobList",
        "metadata": {},
        "items": [{"metadata": {"uid": str(u)}} for u in cluster.jobs],
    }


async def test_kopfs_start_up_list_serves_the_first_sweep_and_no_list_of_its_own_is_made(
    app: App, cluster: RecordingCluster, settings: Settings
) -> None:
    vanished, kept = new_ref("vanished"), new_ref("kept")
    for ref in (vanished, kept):
        await app.admissions.observe(cluster.body(ref, NOOP))
    del cluster.jobs[vanished.uid]  # deleted while no operator watched
    counted = CountedLists(cluster)
    restarted = await App.assemble(settings, counted, "restarted")
    try:
        first = await restarted.maintenance.expect_first_list(scopes=1)
        assert first is not None
        # kopf's list is under way: the pass neither cancels anything nor lists the cluster.
        await restarted.maintenance.rebuild()
        row = await restarted.ledger.get(vanished.uid)
        assert row is not None and not row.deleted
        first.page("https://k8s.test/apis/relay.dev/v1alpha1/relayjobs?limit=500", _list_answer(cluster))
        await restarted.maintenance.rebuild()
        row = await restarted.ledger.get(vanished.uid)
        assert row is not None and row.deleted and row.phase is Phase.CANCELLED
        kept_row = await restarted.ledger.get(kept.uid)
        assert kept_row is not None and not kept_row.deleted
        assert counted.lists == 0
        assert restarted.maintenance.first_list is None and first.known == set()
    finally:
        await restarted.close()


async def test_a_job_admitted_after_the_ledger_was_read_is_never_taken_for_vanished(
    app: App, cluster: RecordingCluster, settings: Settings
) -> None:
    """A RelayJob created after kopf's list was taken (so missing from it) and admitted by another
    replica meanwhile is not in what was read before kopf started: it stays."""
    restarted = await App.assemble(settings, cluster, "restarted")
    try:
        first = await restarted.maintenance.expect_first_list(scopes=1)
        assert first is not None
        listed = _list_answer(cluster)
        late = new_ref("late")
        await app.admissions.observe(cluster.body(late, NOOP))  # the other replica
        first.page("https://k8s.test/apis/relay.dev/v1alpha1/relayjobs", listed)
        await restarted.maintenance.rebuild()
        row = await restarted.ledger.get(late.uid)
        assert row is not None and not row.deleted
    finally:
        await restarted.close()


async def test_without_kopfs_list_in_time_the_first_sweep_lists_the_cluster_itself(
    app: App, cluster: RecordingCluster, settings: Settings
) -> None:
    vanished = new_ref("vanished")
    await app.admissions.observe(cluster.body(vanished, NOOP))
    del cluster.jobs[vanished.uid]
    counted = CountedLists(cluster)
    restarted = await App.assemble(settings, counted, "restarted")
    try:
        first = await restarted.maintenance.expect_first_list(scopes=1)
        assert first is not None
        first.deadline = 0.0  # a standby replica: kopf lists nothing while it waits
        await restarted.maintenance.rebuild()
        assert counted.lists == 1
        row = await restarted.ledger.get(vanished.uid)
        assert row is not None and row.deleted
    finally:
        await restarted.close()
