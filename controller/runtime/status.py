"""The one writer of RelayJob status in this process.

Transitions only mark a job dirty; a flush loop sends each dirty job its whole status document,
built from its ledger row: the row the ledger returned from the write that changed it (`offer`), or
one read back (`mark`). Writing what the ledger says (not what a caller thought) keeps the three
records in agreement. Coalescing means a job that finishes soon gets a single write: a job about to
run (Queued and ready, or Processing) is written only after `quiet_seconds`, so one that completes
meanwhile shows `Completed` with no `Queued` or `Processing` in between.

Guarantees: a job is in at most one batch at a time (two of its documents never race each other
to the API server); a batch that fails for a server error keeps its jobs dirty, and no batch starts
before its pause is over (loop "status": 0.5 s, doubled up to 30 s, once for batches that fail
together); a patch the API server refuses for good is logged and never retried; `wait_idle`
returns once no job is dirty or being written. Each patch the API server accepts observes
`relayjob_status_lag_seconds`: the time since the oldest change it shows was handed over (`mark`
or `offer`), the quiet time and any retries included, so it measures the contract's "status lags
by at most a few seconds" as users see it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

from controller.adapters.kube import KubeError
from controller.adapters.metrics import Metrics
from controller.core.status import status_document
from controller.model.jobs import ClusterApi, JobRow
from controller.model.phases import Phase, Reason
from controller.runtime.logs import job_fields
from controller.runtime.retry import TRANSIENT, Throttle, throttled

log = logging.getLogger("relayjob.status")
# Batches reading the ledger at once. A batch whose rows are read no longer holds a place: it waits
# on its patches, which `concurrency` bounds, so a job that changes meanwhile is written behind no
# batch's slowest patch.
PIPELINE = 3


class _AlreadyPaused(Exception):
    """A batch failed while the writer already pauses for the failure of another."""


class StatusLedger(Protocol):
    """What the status writer reads and records in the ledger (`adapters.ledger.Ledger`)."""

    async def get_many(self, uids: Iterable[UUID]) -> dict[UUID, JobRow]: ...

    async def versions(self, uids: Iterable[UUID]) -> dict[UUID, int]: ...

    async def statuses_written(self, written: Mapping[UUID, int]) -> dict[UUID, int]: ...


def _about_to_change(row: JobRow) -> bool:
    """Queued and ready to run, or running: a state the job is expected to leave within moments.
    (A job waiting for its RelayQueue to exist is not: the user should see why at once.)"""
    if row.phase is Phase.PROCESSING:
        return True
    return row.phase is Phase.QUEUED and row.next_attempt_at is None and row.reason != Reason.QUEUE_NOT_FOUND


class StatusWriter:
    def __init__(
        self,
        *,
        ledger: StatusLedger,
        kube: ClusterApi,
        metrics: Metrics,
        flush_seconds: float,
        concurrency: int,
        quiet_seconds: float = 0.0,
    ) -> None:
        self._ledger = ledger
        self._kube = kube
        self._metrics = metrics
        self._flush_seconds = flush_seconds
        self._quiet_seconds = quiet_seconds
        self._limit = asyncio.Semaphore(concurrency)
        self._batch_size = concurrency
        self._in_flight: set[UUID] = set()  # jobs of batches being written
        self._reading = 0  # batches reading the ledger
        self._throttle = Throttle(0.5, 30.0)  # after a failed flush, no batch starts until it pauses
        self._dirty: dict[UUID, float] = {}  # uid -> when (monotonic) its write is due
        # uid -> when (monotonic) its oldest change not yet shown was handed over, for
        # relayjob_status_lag_seconds: `_changed` for dirty jobs, `_sent` for jobs being written.
        self._changed: dict[UUID, float] = {}
        self._sent: dict[UUID, float] = {}
        self._rows: dict[UUID, JobRow] = {}  # the newest row the ledger handed us, when we have it
        self._wake = asyncio.Event()
        self._written: dict[UUID, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def mark(self, uids: Iterable[UUID]) -> None:
        """These jobs changed: write them soon, from a fresh read of the ledger."""
        now = time.monotonic()
        for uid in uids:
            self._rows.pop(uid, None)
            self._dirty[uid] = now
            self._changed.setdefault(uid, now)
        self._kick()

    def repair(self, uids: Iterable[UUID]) -> None:
        """These RelayJobs show a status the ledger did not give them (another client wrote it):
        write them again from the ledger, even at a version this process has written before."""
        uids = list(uids)
        for uid in uids:
            self._written.pop(uid, None)
        self.mark(uids)

    def offer(self, rows: Iterable[JobRow]) -> None:
        """Rows the ledger just returned from a write: written as they are, without reading them
        again (a newer transition from elsewhere is caught by the version check after the write)."""
        now = time.monotonic()
        for row in rows:
            uid = row.ref.uid
            known = self._rows.get(uid)
            if known is not None and known.version >= row.version:
                continue
            self._rows[uid] = row
            due = now + self._quiet_seconds if _about_to_change(row) else now
            self._dirty[uid] = min(due, self._dirty.get(uid, due))
            self._changed.setdefault(uid, now)
        self._kick()

    def _kick(self) -> None:
        if self._dirty:
            self._idle.clear()
            self._wake.set()

    async def wait_idle(self) -> None:
        """Until no job is dirty or being written."""
        await self._idle.wait()

    async def run(self) -> None:
        """Write dirty jobs in batches of at most `concurrency`, with up to `PIPELINE` batches
        reading the ledger: a job that changes while batches wait on their patches is read and
        patched at once (within `concurrency` patches in all), not after the slowest patch of a
        batch before it. A job is in one batch at a time, so two of its documents never race each
        other to the API server."""
        flushing: set[asyncio.Task[None]] = set()
        try:
            while True:
                for task in [t for t in flushing if t.done()]:
                    flushing.discard(task)
                    task.result()  # an error the flush could not turn into a retry ends the loop
                now = time.monotonic()
                if self._reading < PIPELINE and not self._throttle.remaining():
                    batch = self._take_due(now)
                    if batch:
                        self._reading += 1
                        flushing.add(asyncio.create_task(self._flush_batch(batch)))
                        continue
                if not self._dirty and not flushing:
                    self._idle.set()
                await self._sleep(now, flushing)
        finally:
            # Batches belong to the loop: when it stops (shutdown, or an error above), so do they.
            for task in flushing:
                task.cancel()
            await asyncio.gather(*flushing, return_exceptions=True)
            self._reading = 0  # a batch cancelled before it began never gave its place up

    def _take_due(self, now: float) -> list[UUID]:
        batch = []
        for uid, at in self._dirty.items():
            if at <= now and uid not in self._in_flight:
                batch.append(uid)
                if len(batch) >= self._batch_size:
                    break
        for uid in batch:
            del self._dirty[uid]
            self._sent[uid] = self._changed.pop(uid, now)
        self._in_flight.update(batch)
        return batch

    async def _sleep(self, now: float, flushing: set[asyncio.Task[None]]) -> None:
        """Until a batch ends, a job changes or the next write falls due. A change that finds the
        writer idle waits `flush_seconds` more, so that the changes of a burst share batches."""
        idle = not flushing
        waits = {n for n in self._dirty.values() if n > now}
        timeout = (min(waits) - now) if waits else None
        pause = self._throttle.remaining()
        if pause:
            timeout = pause
        self._wake.clear()
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({woken, *flushing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if idle and self._wake.is_set():
            await asyncio.sleep(self._flush_seconds)

    async def _flush_batch(self, batch: list[UUID]) -> None:
        try:
            try:
                async with throttled(
                    self._throttle, self._metrics, "status", what="status flush", logger=log
                ):
                    await self._write_batch(batch)
                    return
            except _AlreadyPaused:
                self._metrics.errors.labels("status").inc()
            # The API server or Postgres is away: keep the jobs dirty and try again after the pause.
            self.mark(batch)
        finally:
            self._in_flight.difference_update(batch)
            for uid in batch:
                # Not shown (the write failed, so the job is dirty again): its lag runs on from
                # the change it was sent for.
                since = self._sent.pop(uid, None)
                if since is not None and uid in self._dirty:
                    self._changed[uid] = min(since, self._changed.get(uid, since))
            self._wake.set()

    async def _write_batch(self, batch: list[UUID]) -> None:
        """`flush` for a batch of the loop, which gives its place up once its rows are read.
        Batches out together fail together when a server goes away: only the first one to fail
        pauses the writer (doubling the pause for each would stop status writes for 30 s)."""
        try:
            try:
                rows = await self._read(batch)
            finally:
                self._reading -= 1
                self._wake.set()
            await self._deliver(rows)
        except TRANSIENT as error:
            if self._throttle.remaining():
                raise _AlreadyPaused from error
            raise

    async def flush(self, uids: list[UUID]) -> None:
        """Write the status of `uids` now, each from the row handed over while it is current, else
        from a fresh read. Raises a ledger error, or the first patch failure worth retrying (no
        answer, 409, 429, 5xx; that job is marked dirty again)."""
        await self._deliver(await self._read(uids))

    async def _read(self, uids: list[UUID]) -> dict[UUID, JobRow]:
        """The rows to write for `uids`: those handed over while still current, the rest read."""
        rows = {uid: self._rows.pop(uid) for uid in uids if uid in self._rows}
        if rows:  # rows we were handed are used only while still current: a version is a cheap read
            current = await self._ledger.versions(list(rows))
            rows = {uid: row for uid, row in rows.items() if current.get(uid) == row.version}
        unread = [uid for uid in uids if uid not in rows]
        if unread:
            rows.update(await self._ledger.get_many(unread))
        return rows

    async def _deliver(self, rows: dict[UUID, JobRow]) -> None:
        """Patch each row's status, then record the versions delivered."""
        now = datetime.now(UTC)
        todo = [r for r in rows.values() if not r.deleted and self._written.get(r.ref.uid) != r.version]
        results = await asyncio.gather(*(self._write(r, now) for r in todo), return_exceptions=True)
        failures = [e for e in results if isinstance(e, BaseException)]
        if failures:
            raise failures[0]
        # Another replica may have recorded a newer transition and written its status between our
        # read and our patch, so our older document could now be the one the API server holds.
        # Whoever patched last re-reads: if the ledger moved on, it writes again. The ledger is
        # linearisable, so this ends with the newest status in place, unless the replica that
        # recorded the newest transition stopped before its own patch: the version recorded here
        # then stays behind, and reconciliation writes that job (`Maintenance.repair_statuses`).
        # A document the API server refused for good (or whose RelayJob is gone) is recorded as
        # delivered too: repairing it would only be refused again, every reconcile interval.
        if todo:
            latest = await self._ledger.statuses_written({r.ref.uid: r.version for r in todo})
            self.mark(r.ref.uid for r in todo if latest.get(r.ref.uid, r.version) != r.version)

    async def _write(self, row: JobRow, now: datetime) -> None:
        """Patch one status; raises only for failures worth retrying."""
        async with self._limit:
            try:
                exists = await self._kube.patch_status(row.ref, status_document(row, now))
            except KubeError as error:
                if error.status in (0, 409, 429) or error.status >= 500:
                    self.mark([row.ref.uid])
                    raise
                log.error("status patch refused: %s", error, extra=job_fields(row.ref))
                return
        self._metrics.status_writes.inc()
        since = self._sent.pop(row.ref.uid, None)
        if since is not None:
            self._metrics.status_lag.observe(time.monotonic() - since)
        if exists and not row.phase.terminal:
            self._written[row.ref.uid] = row.version
        else:
            self._written.pop(row.ref.uid, None)
