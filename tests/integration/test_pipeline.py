"""Admission through completion with the operator's own loops on real Redis and PostgreSQL."""

from __future__ import annotations

import time
import uuid

import pytest

from controller.adapters.queue import Claimed
from controller.model.phases import Phase
from controller.runtime.app import App
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, eventually, new_ref, running

pytestmark = pytest.mark.integration


async def phases(app: App, uids: list[uuid.UUID]) -> list[Phase]:
    rows = await app.ledger.get_many(uids)
    return [rows[u].phase for u in uids]


async def test_admit_claim_complete(app: App, cluster: RecordingCluster) -> None:
    refs = [new_ref(f"job-{i}") for i in range(25)]
    async with running(app):
        for ref in refs:
            await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}, "payload": {"i": 1}}))
        uids = [r.uid for r in refs]

        async def all_completed() -> bool:
            return await phases(app, uids) == [Phase.COMPLETED] * len(uids) and all(
                cluster.status.get(u, {}).get("phase") == "Completed" for u in uids
            )

        await eventually(all_completed)
        await app.status.wait_idle()
    for uid in uids:
        status = cluster.status[uid]
        assert status["attempts"] == 1 and status["completedAt"]
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions == {"Succeeded": "True", "Failed": "False"}
        attempts = await app.ledger.attempts_of(uid)
        assert [a["outcome"] for a in attempts] == ["succeeded"]
    depth = await app.queue.depth()
    assert (depth.ready, depth.delayed, depth.leased, depth.dead) == (0, 0, 0, 0)
    assert await app.redis.hlen(app.queue.score) == 0


async def test_stale_entry_is_skipped_counted_and_removed(app: App, cluster: RecordingCluster) -> None:
    from controller.adapters.queue import Placement

    ghost = str(uuid.uuid4())
    await app.queue.place([Placement(ghost, 0, 0, "default/default")], 0)
    real = new_ref("real")
    async with running(app):
        await app.admissions.observe(cluster.body(real, {"target": {"noop": {}}}))

        async def done() -> bool:
            # The ghost may be claimed after the real job completed (claims follow the queue's
            # order, and a claim may take the real job alone): wait for both.
            completed = (await phases(app, [real.uid])) == [Phase.COMPLETED]
            return completed and app.metrics.stale._value.get() >= 1

        await eventually(done)
    assert app.metrics.stale._value.get() == 1
    assert ghost not in await app.queue.members()


async def test_invalid_spec_is_rejected_with_reason(app: App, cluster: RecordingCluster) -> None:
    bad = new_ref("bad")
    async with running(app):
        await app.admissions.observe(
            cluster.body(bad, {"target": {"noop": {}}, "payload": {"x": "y" * 70000}})
        )

        async def rejected() -> bool:
            return cluster.status.get(bad.uid, {}).get("phase") == "Rejected"

        await eventually(rejected)
    assert cluster.status[bad.uid]["reason"] == "PayloadTooLarge"
    assert any(e[2] == "PayloadTooLarge" for e in cluster.events)


async def test_a_job_queued_while_a_claim_is_out_is_not_left_waiting(
    settings: Settings, cluster: RecordingCluster
) -> None:
    """The claim loop cleared its wake-up flag after an empty claim, so a job admitted while that
    claim was out waited for the next poll, which an idle worker spaces up to the poll interval."""
    app = await App.assemble(settings.model_copy(update={"poll_interval_seconds": 5.0}), cluster, "t")
    ref = new_ref("mid-claim")
    claim = app.queue.claim
    calls = 0
    admitted_at = 0.0

    async def claim_and_meanwhile_admit(n: int, now_ms: int, lease_ms: int) -> Claimed:
        nonlocal calls, admitted_at
        calls += 1
        uids = await claim(n, now_ms, lease_ms)
        if calls == 9:  # idle by now: the next poll would come about 1.3 s later
            await app.admissions.observe(cluster.body(ref, {"target": {"noop": {}}}))
            admitted_at = time.monotonic()
        return uids

    app.queue.claim = claim_and_meanwhile_admit  # type: ignore[method-assign]
    try:
        async with running(app):

            async def done() -> bool:
                row = await app.ledger.get(ref.uid)
                return row is not None and row.phase is Phase.COMPLETED

            await eventually(done, timeout=15, every=0.01)
            waited = time.monotonic() - admitted_at
    finally:
        await app.close()
    assert waited < 0.5, f"the job waited {waited:.2f}s for a claim"
