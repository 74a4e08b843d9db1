"""The one writer of RelayJob status in this process.

Transitions only mark a job dirty; a flush loop reads the ledger rows of every dirty job and sends
each its whole status document. Writing what the ledger says (not what a caller thought) keeps the
three records in agreement, and coalescing means a job that finishes within one flush interval
gets a single write: `Completed`, with no `Queued` or `Processing` in between.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from uuid import UUID

from controller.adapters.kube import KubeError
from controller.adapters.ledger import Ledger
from controller.adapters.metrics import Metrics
from controller.core.lifecycle import status_document
from controller.model.jobs import ClusterApi, JobRow
from controller.runtime.logs import job_fields
from controller.runtime.retry import TRANSIENT

log = logging.getLogger("relayjob.status")
FLUSH_BATCH = 500


class StatusWriter:
    def __init__(
        self,
        ledger: Ledger,
        kube: ClusterApi,
        metrics: Metrics,
        flush_seconds: float,
        concurrency: int,
    ) -> None:
        self._ledger = ledger
        self._kube = kube
        self._metrics = metrics
        self._flush_seconds = flush_seconds
        self._limit = asyncio.Semaphore(concurrency)
        self._dirty: set[UUID] = set()
        self._wake = asyncio.Event()
        self._written: dict[UUID, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def mark(self, uids: Iterable[UUID]) -> None:
        before = len(self._dirty)
        self._dirty.update(uids)
        if len(self._dirty) != before:
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
            batch = list(self._dirty)[:FLUSH_BATCH]
            self._dirty.difference_update(batch)
            try:
                await self.flush(batch)
                backoff = 0.5
            except TRANSIENT as error:
                # The API server or PostgreSQL is away (restarting, shutting down): keep the jobs
                # dirty and try again later; this loop must outlive every outage.
                log.warning("status flush failed, retrying in %.1fs: %s", backoff, error)
                self._metrics.errors.labels("status").inc()
                self._dirty.update(batch)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)
            if self._dirty:
                self._wake.set()
            else:
                self._idle.set()

    async def flush(self, uids: list[UUID]) -> None:
        rows = await self._ledger.get_many(uids)
        now = datetime.now(UTC)
        todo = [r for r in rows.values() if not r.deleted and self._written.get(r.ref.uid) != r.version]
        results = await asyncio.gather(*(self._write(r, now) for r in todo), return_exceptions=True)
        failures = [e for e in results if isinstance(e, BaseException)]
        if failures:
            raise failures[0]
        # Another replica may have recorded a newer transition and written its status between our
        # read and our patch, so our older document could now be the one the API server holds.
        # Whoever patched last re-reads: if the ledger moved on, it writes again. The ledger is
        # linearisable, so this always ends with the newest status in place.
        written = [r for r, ok in zip(todo, results, strict=True) if ok is True]
        if written:
            latest = await self._ledger.get_many([r.ref.uid for r in written])
            self.mark(r.ref.uid for r in written if latest[r.ref.uid].version != r.version)

    async def _write(self, row: JobRow, now: datetime) -> bool:
        """Patch one status; True when the document reached the RelayJob."""
        async with self._limit:
            try:
                exists = await self._kube.patch_status(row.ref, status_document(row, now))
            except KubeError as error:
                if error.status in (0, 409, 429) or error.status >= 500:
                    self._dirty.add(row.ref.uid)
                    raise
                log.error("status patch refused: %s", error, extra=job_fields(row.ref))
                return False
        self._metrics.status_writes.inc()
        if exists and not row.phase.terminal:
            self._written[row.ref.uid] = row.version
        else:
            self._written.pop(row.ref.uid, None)
        return exists
