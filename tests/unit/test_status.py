"""The status writer, on a fake ledger and API server: coalesced, current, and patient with outages."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from controller.adapters.kube import KubeError
from controller.adapters.metrics import Metrics
from controller.model.jobs import JobRow
from controller.model.phases import Phase
from controller.runtime.status import StatusWriter
from tests.unit.fakes import FakeCluster, FakeLedger, in_background, job_row, until


class Writer:
    def __init__(self, rows: list[JobRow], quiet_seconds: float = 0.0) -> None:
        self.ledger, self.cluster, self.metrics = FakeLedger(rows), FakeCluster(), Metrics()
        self.writer = StatusWriter(
            ledger=self.ledger,
            kube=self.cluster,
            metrics=self.metrics,
            flush_seconds=0.0,
            concurrency=4,
            quiet_seconds=quiet_seconds,
        )

    def moved(self, row: JobRow, phase: Phase) -> JobRow:
        """The ledger recorded a transition of `row`; returns the row it answered with."""
        changed = row.model_copy(
            update={"phase": phase, "version": self.ledger.rows[row.ref.uid].version + 1}
        )
        self.ledger.rows[row.ref.uid] = changed
        return changed

    def running(self) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
        return in_background(self.writer.run())

    async def patching(self, row: JobRow, patches: int) -> None:
        """Mark `row` dirty; return once `patches` patches in all have reached the API server."""
        self.writer.mark([row.ref.uid])
        await until(lambda: self.cluster.calls.count("patch_status") >= patches)

    async def idle(self) -> None:
        await asyncio.sleep(0)
        await asyncio.wait_for(self.writer.wait_idle(), 5)


async def test_rows_handed_over_are_written_as_they_are_without_reading_them_again() -> None:
    row = job_row(Phase.QUEUED)
    writer = Writer([row])
    async with writer.running():
        writer.writer.offer([writer.moved(row, Phase.COMPLETED)])
        await writer.idle()
    assert writer.cluster.status[row.ref.uid]["phase"] == "Completed"
    assert "get_many" not in writer.ledger.calls and "versions" in writer.ledger.calls
    assert writer.ledger.written == {row.ref.uid: writer.ledger.rows[row.ref.uid].version}


async def test_a_job_that_finishes_within_the_quiet_time_gets_one_write() -> None:
    row = job_row(Phase.QUEUED)
    writer = Writer([row], quiet_seconds=0.2)
    async with writer.running():
        writer.writer.offer([writer.moved(row, Phase.PROCESSING)])  # about to change: held back
        await asyncio.sleep(0.05)
        writer.writer.offer([writer.moved(row, Phase.COMPLETED)])
        await writer.idle()
    assert writer.cluster.patches == 1 and writer.cluster.status[row.ref.uid]["phase"] == "Completed"


async def test_a_row_handed_over_that_is_no_longer_current_is_read_again() -> None:
    row = job_row(Phase.QUEUED)
    writer = Writer([row])
    stale = writer.moved(row, Phase.PROCESSING)
    writer.moved(row, Phase.COMPLETED)  # recorded elsewhere meanwhile
    async with writer.running():
        writer.writer.offer([stale])
        await writer.idle()
    assert writer.cluster.status[row.ref.uid]["phase"] == "Completed"


async def test_a_flush_that_meets_an_outage_keeps_its_jobs_dirty_and_tries_again() -> None:
    row = job_row(Phase.QUEUED)
    writer = Writer([row])
    writer.ledger.fail("get_many", asyncpg.exceptions.CannotConnectNowError("injected: restarting"))
    async with writer.running():
        writer.writer.mark([row.ref.uid])
        await writer.idle()
    assert writer.cluster.status[row.ref.uid]["phase"] == "Queued"
    assert writer.ledger.calls.count("get_many") == 2
    assert writer.metrics.errors.labels("status")._value.get() == 1


async def test_batches_that_fail_together_pause_the_writer_once() -> None:
    """Each failed batch doubled the pause: an API server that went away with three batches out
    held every status write back 2 s after it returned, not 0.5 s (more batches, up to 30 s)."""
    rows = [job_row(Phase.QUEUED) for _ in range(3)]
    writer = Writer(rows)
    writer.cluster.hold("patch_status")
    async with writer.running():
        for sent, row in enumerate(rows, 1):  # each in a batch of its own
            await writer.patching(row, sent)
        writer.cluster.fail("patch_status", *(KubeError(503, "etcd leader changed") for _ in rows))
        began = asyncio.get_running_loop().time()
        writer.cluster.resume("patch_status")
        await writer.idle()
        waited = asyncio.get_running_loop().time() - began
    assert all(writer.cluster.status[row.ref.uid]["phase"] == "Queued" for row in rows)
    assert waited < 1.0, waited


async def _patch_failing_once() -> tuple[Writer, JobRow]:
    """A job marked dirty whose first patch meets a 503; returns once the writer is idle again."""
    row = job_row(Phase.QUEUED)
    writer = Writer([row])
    writer.cluster.fail("patch_status", KubeError(503, "etcd leader changed"))
    async with writer.running():
        writer.writer.mark([row.ref.uid])
        await writer.idle()  # the writer paused 0.5 s after the failure, and tried again
    return writer, row


async def test_a_patch_the_api_server_may_accept_later_is_tried_again() -> None:
    writer, row = await _patch_failing_once()
    assert writer.cluster.calls == ["patch_status", "patch_status"]
    assert writer.cluster.status[row.ref.uid]["phase"] == "Queued"


async def test_a_patch_refused_for_good_is_not_tried_again() -> None:
    row = job_row(Phase.QUEUED)
    writer = Writer([row])
    writer.cluster.fail("patch_status", KubeError(422, "status.phase: Unsupported value"))
    async with writer.running():
        writer.writer.mark([row.ref.uid])
        await writer.idle()
        await asyncio.sleep(0.05)
    assert writer.cluster.calls == ["patch_status"] and row.ref.uid not in writer.cluster.status
    assert writer.metrics.errors.labels("status")._value.get() == 0


async def test_a_newer_transition_recorded_during_the_patch_is_written_after_it() -> None:
    row = job_row(Phase.QUEUED)
    writer = Writer([row])
    writer.cluster.hold("patch_status")
    async with writer.running():
        writer.writer.mark([row.ref.uid])
        await writer.cluster.entered["patch_status"].wait()
        writer.moved(row, Phase.COMPLETED)  # another replica recorded it, and its patch landed first
        writer.cluster.resume("patch_status")
        await writer.idle()
    assert writer.cluster.status[row.ref.uid]["phase"] == "Completed"


def _lag(writer: Writer) -> tuple[float, float]:
    """(patches observed, seconds in all) of relayjob_status_lag_seconds."""
    samples = {s.name: s.value for m in writer.metrics.status_lag.collect() for s in m.samples}
    return samples["relayjob_status_lag_seconds_count"], samples["relayjob_status_lag_seconds_sum"]


async def test_status_lag_runs_from_the_change_to_the_patch_that_shows_it() -> None:
    row = job_row(Phase.QUEUED)
    writer = Writer([row])
    writer.cluster.hold("patch_status")
    async with writer.running():
        await writer.patching(row, 1)
        await asyncio.sleep(0.2)  # the API server takes its time
        writer.cluster.resume("patch_status")
        await writer.idle()
    count, seconds = _lag(writer)
    assert count == 1 and seconds >= 0.2


async def test_status_lag_of_a_retried_patch_counts_from_the_first_try() -> None:
    writer, _ = await _patch_failing_once()
    count, seconds = _lag(writer)
    assert count == 1 and seconds >= 0.5
    assert not writer.writer._changed and not writer.writer._sent  # nothing kept for written jobs
