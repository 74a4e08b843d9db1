"""The one writer of RelayJob status in this process.

Transitions only mark a job dirty; a flush loop sends each dirty job its whole status document,
built from its ledger row: the row the ledger returned from the write that changed it (`offer`), or
one read back (`mark`). Writing what the ledger says (not what a caller thought) keeps the three
records in agreement. Coalescing means a job that finishes soon gets a single write: a job about to
run (Queued and ready, or Processing) is written only after `quiet_seconds`, so one that completes
meanwhile shows `Completed` with no `Queued` or `Processing` in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from uuid import UUID

from controller.adapters.kube import KubeError
from controller.adapters.ledger import Ledger
from controller.adapters.metrics import Metrics
from controller.core.lifecycle import status_document
from controller.model.jobs import ClusterApi, JobRow
from controller.model.phases import Phase
from controller.runtime.logs import job_fields
from controller.runtime.retry import TRANSIENT

log = logging.getLogger("relayjob.status")
FLUSH_BATCH = 500


def _about_to_change(row: JobRow) -> bool:
    """Queued and ready to run, or running: a state the job is expected to leave within moments."""
    if row.phase is Phase.PROCESSING:
        return True
    return row.phase is Phase.QUEUED and row.next_attempt_at is None


class StatusWriter:
    def __init__(
        self,
        ledger: Ledger,
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
        self._dirty: dict[UUID, float] = {}  # uid -> when (monotonic) its write is due
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
        self._kick()

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
        self._kick()

    def _kick(self) -> None:
        if self._dirty:
            self._idle.clear()
            self._wake.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._flush_seconds)
            self._wake.clear()
            now = time.monotonic()
            batch = [uid for uid, at in self._dirty.items() if at <= now][:FLUSH_BATCH]
            for uid in batch:
                del self._dirty[uid]
            if batch:
                try:
                    await self.flush(batch)
                    backoff = 0.5
                except TRANSIENT as error:
                    # The API server or Postgres is away: keep the jobs dirty and try again later.
                    log.warning("status flush failed, retrying in %.1fs: %s", backoff, error)
                    self._metrics.errors.labels("status").inc()
                    self.mark(batch)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30)
            if not self._dirty:
                self._idle.set()
                continue
            pause = min(self._dirty.values()) - time.monotonic()
            if pause > 0:  # nothing due yet: sleep until the first is, or until something new comes
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._wake.wait()
            self._wake.set()

    async def flush(self, uids: list[UUID]) -> None:
        rows = {uid: self._rows.pop(uid) for uid in uids if uid in self._rows}
        if rows:  # rows we were handed are used only while still current: a version is a cheap read
            current = await self._ledger.versions(list(rows))
            rows = {uid: row for uid, row in rows.items() if current.get(uid) == row.version}
        unread = [uid for uid in uids if uid not in rows]
        if unread:
            rows.update(await self._ledger.get_many(unread))
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
        # then stays behind, and reconciliation writes that job (`Reconciler.repair_statuses`).
        written = [r for r, ok in zip(todo, results, strict=True) if ok is True]
        if written:
            latest = await self._ledger.statuses_written({r.ref.uid: r.version for r in written})
            self.mark(r.ref.uid for r in written if latest.get(r.ref.uid, r.version) != r.version)

    async def _write(self, row: JobRow, now: datetime) -> bool:
        """Patch one status; True when the document reached the RelayJob."""
        async with self._limit:
            try:
                exists = await self._kube.patch_status(row.ref, status_document(row, now))
            except KubeError as error:
                if error.status in (0, 409, 429) or error.status >= 500:
                    self.mark([row.ref.uid])
                    raise
                log.error("status patch refused: %s", error, extra=job_fields(row.ref))
                return False
        self._metrics.status_writes.inc()
        if exists and not row.phase.terminal:
            self._written[row.ref.uid] = row.version
        else:
            self._written.pop(row.ref.uid, None)
        return exists
