"""A process that starts is delivered every RelayJob by kopf's list, a page at a time: the page costs
one ledger read, the RelayJobs the ledger knows no admission; on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.model.phases import Phase
from controller.runtime.app import App
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, new_ref

pytestmark = pytest.mark.integration

NOOP: dict[str, Any] = {"target": {"noop": {}}}


def count_calls(app: App, *names: str) -> list[str]:
    """The calls of the ledger methods `names` that `app` makes from now on, by name, in order."""
    sent: list[str] = []

    def counted(name: str) -> Any:
        method = getattr(app.ledger, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            sent.append(name)
            return await method(*args, **kwargs)

        return call

    for name in names:
        setattr(app.ledger, name, counted(name))
    return sent


def count_admissions(app: App) -> list[str]:
    """The admission statements `app` sends, by name, from now on."""
    return count_calls(app, "admit", "admit_many")


async def test_a_listed_relayjob_the_ledger_knows_is_read_not_admitted_again(
    app: App, cluster: RecordingCluster, settings: Settings
) -> None:
    ref = new_ref("known")
    await app.admissions.observe(cluster.body(ref, NOOP))
    restarted = await App.assemble(settings, cluster, "restarted")
    try:
        sent = count_admissions(restarted)
        await restarted.admissions.observe(cluster.body(ref, NOOP), listed=True)
        assert sent == []
        assert restarted.admissions.seen(ref.uid)
        row = await restarted.ledger.get(ref.uid)
        assert row is not None and row.phase is Phase.QUEUED
    finally:
        await restarted.close()


async def test_a_listed_relayjob_the_ledger_does_not_know_is_admitted(
    app: App, cluster: RecordingCluster
) -> None:
    ref = new_ref("created-while-down")
    await app.admissions.observe(cluster.body(ref, NOOP), listed=True)
    row = await app.ledger.get(ref.uid)
    assert row is not None and row.phase is Phase.QUEUED
    assert (await app.queue.depth()).ready == 1
    assert app.metrics.registry.get_sample_value("relayjob_listed_relayjobs_total", {"path": "event"}) == 1


async def test_a_listed_relayjob_whose_status_is_behind_the_ledger_gets_it_written(
    app: App, cluster: RecordingCluster, settings: Settings
) -> None:
    ref = new_ref("behind")
    await app.admissions.observe(cluster.body(ref, NOOP))
    cluster.status.pop(ref.uid, None)  # the status patch never landed before the process stopped
    restarted = await App.assemble(settings, cluster, "restarted")
    try:
        await restarted.admissions.observe(cluster.body(ref, NOOP), listed=True)
        await restarted.status.flush([ref.uid])
        assert cluster.status[ref.uid]["phase"] == "Queued"
    finally:
        await restarted.close()


def count_reads(app: App) -> list[str]:
    """The ledger reads by uid `app` sends, by name, from now on."""
    return count_calls(app, "get", "get_many", "shown")


async def test_a_listed_page_is_reconciled_with_one_read_and_only_the_jobs_needing_action_go_on(
    app: App, cluster: RecordingCluster, settings: Settings
) -> None:
    known = [new_ref(f"known-{i}") for i in range(50)]
    behind, changed, redriven = new_ref("behind"), new_ref("changed"), new_ref("redriven")
    for ref in (*known, behind, changed, redriven):
        await app.admissions.observe(cluster.body(ref, NOOP))
    await app.status.flush([ref.uid for ref in (*known, behind, changed, redriven)])
    cluster.status.pop(behind.uid)
    fresh = new_ref("created-while-down")
    page = [
        *(cluster.body(ref, NOOP) for ref in known),
        cluster.body(behind, NOOP),
        cluster.body(changed, {**NOOP, "priority": 5}, generation=2),
        cluster.body(redriven, NOOP, annotations={"relay.dev/redrive": "again"}),
        cluster.body(fresh, NOOP),
        {"metadata": {"name": "no-uid", "namespace": "default"}},
    ]
    patched = dict(cluster.patches)
    restarted = await App.assemble(settings, cluster, "restarted")
    writer = asyncio.create_task(restarted.status.run())
    try:
        reads, admissions = count_reads(restarted), count_admissions(restarted)
        left = await restarted.admissions.observe_page(page)
        assert reads == ["shown"] and admissions == []
        await asyncio.wait_for(restarted.status.wait_idle(), 10)
        assert [body["metadata"]["name"] for body in left] == [
            "changed",
            "redriven",
            "created-while-down",
            "no-uid",
        ]
        assert all(restarted.admissions.seen(ref.uid) for ref in (*known, behind))
        listed = restarted.metrics.registry.get_sample_value
        assert listed("relayjob_listed_relayjobs_total", {"path": "page"}) == len(known) + 1
        assert not restarted.admissions.seen(fresh.uid)
        assert cluster.status[behind.uid]["phase"] == "Queued"
        assert all(cluster.patches[ref.uid] == patched[ref.uid] for ref in known), "agreeing status rewritten"
        reads.clear()
        assert (await restarted.admissions.observe_page(page[:50])) == []
        assert reads == [], "a page seen at the same generations needs no read"
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await restarted.close()


async def test_a_listed_relayjob_whose_status_another_client_wrote_goes_on_to_be_repaired(
    app: App, cluster: RecordingCluster
) -> None:
    ref = new_ref("overwritten")
    await app.admissions.observe(cluster.body(ref, NOOP))
    body = cluster.body(ref, NOOP)
    body["metadata"]["managedFields"] = [
        {"manager": "kubectl-patch", "subresource": "status", "fieldsV1": {"f:status": {}}}
    ]
    assert await app.admissions.observe_page([body]) == [body]
