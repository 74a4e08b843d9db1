"""A process that starts is delivered every RelayJob by kopf's list: the ones the ledger knows cost
one read each, not an admission; on real Redis and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from controller.model.phases import Phase
from controller.runtime.app import App
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, new_ref

pytestmark = pytest.mark.integration

NOOP: dict[str, Any] = {"target": {"noop": {}}}


def count_admissions(app: App) -> list[str]:
    """The admission statements `app` sends, by name, from now on."""
    sent: list[str] = []
    ledger = app.ledger
    admit, admit_many = ledger.admit, ledger.admit_many

    async def counted_admit(*args: Any, **kwargs: Any) -> Any:
        sent.append("admit")
        return await admit(*args, **kwargs)

    async def counted_admit_many(*args: Any, **kwargs: Any) -> Any:
        sent.append("admit_many")
        return await admit_many(*args, **kwargs)

    ledger.admit = counted_admit  # type: ignore[method-assign]
    ledger.admit_many = counted_admit_many  # type: ignore[method-assign]
    return sent


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
