"""The status writer, on a real ledger, against an in-memory API server."""

from __future__ import annotations

import asyncio

import pytest

from controller.runtime import reconciler
from controller.runtime.app import App
from tests.integration.conftest import RecordingCluster, new_ref, succeeded

pytestmark = pytest.mark.integration


async def test_a_transition_whose_replica_died_before_patching_is_repaired(
    app: App, cluster: RecordingCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica B wrote `Processing` from its ledger read; replica A then recorded `Completed` and
    was SIGKILLed before its patch. B's check after writing had already passed, and nothing else
    looked at the job again: its RelayJob showed `Processing` for good (fault suite, '2 replicas,
    one SIGKILLed', 1 run in 3)."""
    ref = new_ref("orphaned")
    await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
    (row,) = (await app.ledger.start_attempts([str(ref.uid)])).started
    await app.status.flush([ref.uid])  # replica B
    assert cluster.status[ref.uid]["phase"] == "Processing"
    await app.ledger.settle([succeeded(row)], {ref.uid: row.spec})  # replica A, which then dies
    assert await app.reconciler.repair_statuses() == 0  # A may still be about to patch
    monkeypatch.setattr(reconciler, "STATUS_REPAIR_GRACE_SECONDS", 0.0)
    assert await app.reconciler.repair_statuses() == 1
    loop = asyncio.create_task(app.status.run())
    try:
        await asyncio.wait_for(app.status.wait_idle(), 5)
    finally:
        loop.cancel()
    assert cluster.status[ref.uid]["phase"] == "Completed"
    assert await app.reconciler.repair_statuses() == 0
