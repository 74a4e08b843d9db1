"""Graceful shutdown (SIGTERM, a rollout) against real Redis, PostgreSQL and an HTTP target:
`App.drain` while `App.run` goes on, as `relayjob-operator run` stops (tests/e2e/test_rollout.py
has the process itself)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from controller.model.phases import Phase
from controller.runtime.app import App
from controller.settings import Settings
from tests.integration.conftest import RecordingCluster, eventually, running, submit_http
from tests.support.target import Target

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def stopping(app: App, grace: float, after_grace: float = 5.0) -> AsyncIterator[None]:
    """Run the app; on leaving, drain it (`grace` seconds from then) and only then stop `run`."""
    work = asyncio.create_task(app.run())
    try:
        yield
        began = time.monotonic()
        await app.drain(began + grace, began + grace + after_grace)
    finally:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work


async def test_attempts_in_flight_finish_and_are_recorded_and_no_new_one_starts(
    settings: Settings, cluster: RecordingCluster, target: Target
) -> None:
    app = await App.assemble(settings.model_copy(update={"concurrency": 2}), cluster, "leaving")
    try:
        refs = [await submit_http(app, cluster, target.url("/delay/1500"), f"slow-{i}") for i in range(4)]

        async def two_in_flight() -> bool:
            return len(target.calls) == 2

        async with stopping(app, grace=10):
            await eventually(two_in_flight)
            began = time.monotonic()
        took = time.monotonic() - began
        rows = await app.ledger.get_many([r.uid for r in refs])
        ran = {c.key for c in target.calls}
        assert len(ran) == 2 and took < 5, f"drain took {took:.1f}s"
        for ref in refs:
            row, status = rows[ref.uid], cluster.status.get(ref.uid, {})
            if str(ref.uid) in ran:  # finished during the drain: recorded, and its status written
                assert (row.phase, row.attempts) == (Phase.COMPLETED, 1)
                assert (status.get("phase"), status.get("attempts")) == ("Completed", 1)
                outcomes = [a["outcome"] for a in await app.ledger.attempts_of(ref.uid)]
                assert outcomes == ["succeeded"]
            else:  # never started: still waiting for whichever replica claims next
                assert (row.phase, row.attempts) == (Phase.QUEUED, 0)
        assert await app.queue.client.zcard(app.queue.leased) == 0
        waiting = set(await app.queue.client.zrange(app.queue.ready_key("default/default"), 0, -1))
        assert waiting == {str(r.uid) for r in refs} - ran
    finally:
        await app.close()


async def test_an_attempt_outliving_the_grace_is_recorded_as_cut_off_and_runs_again_at_once(
    settings: Settings, cluster: RecordingCluster, target: Target
) -> None:
    """Recorded, not left to its lease: with a 60 s lease, another replica runs it again within
    seconds, and the ledger says why the first attempt ended."""
    settings = settings.model_copy(update={"lease_seconds": 60, "shutdown_grace_seconds": 1})
    leaving = await App.assemble(settings, cluster, "leaving")
    staying = await App.assemble(settings, cluster, "staying")
    try:
        ref = await submit_http(
            leaving, cluster, target.url("/hang-once"), "hangs", maxAttempts=3, timeoutSeconds=120
        )

        async def in_flight() -> bool:
            return len(target.calls) == 1

        async with stopping(leaving, grace=1):
            await eventually(in_flight)
            began = time.monotonic()
        assert time.monotonic() - began < 4
        row = await leaving.ledger.get(ref.uid)
        assert row is not None and (row.phase, row.reason) == (Phase.RETRYING, "ShutdownGraceExceeded")
        assert row.message == "attempt 1 was stopped after the operator's 1s shutdown grace; retrying at once"
        assert cluster.status[ref.uid]["phase"] == "Retrying"
        attempts = await leaving.ledger.attempts_of(ref.uid)
        assert [(a["outcome"], a["reason"]) for a in attempts] == [("lost", "ShutdownGraceExceeded")]
        assert await leaving.queue.client.zscore(leaving.queue.leased, str(ref.uid)) is None

        async def completed() -> bool:
            done = await staying.ledger.get(ref.uid)
            return done is not None and done.phase is Phase.COMPLETED

        async with running(staying):
            await eventually(completed, timeout=10)
        attempts = await staying.ledger.attempts_of(ref.uid)
        assert [(a["outcome"], a["worker"]) for a in attempts] == [
            ("lost", "leaving"),
            ("succeeded", "staying"),
        ]
        assert target.by_key()[str(ref.uid)] == 2
    finally:
        await leaving.close()
        await staying.close()
