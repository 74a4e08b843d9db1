"""Maintenance: periodic loops that bring Redis, the ledger and the cluster back into agreement
when something was lost. (The per-object reconcile of a RelayJob is `Admissions.observe`.)

- `rebuild`: every active ledger job whose RelayJob exists is put back in Redis if missing
  (Redis restarted empty, evicted keys). Its first pass in a process also cancels the ledger jobs
  whose RelayJob vanished while no replica watched, against one list of the cluster (kopf's own
  start-up list when `expect_first_list` was called before kopf started); from then on
  the watch's deletions (`forget`) and its live set (`seen`) say which RelayJobs exist, so a
  pass reads the active jobs only, never the finished ones nor the cluster. Runs at start-up and
  every reconcile interval.
- `reap`: expired leases return to the ready set (a worker died or froze).
- `expire`: finished RelayJobs past `ttlSecondsAfterFinished` are deleted; the ledger keeps them.
- `repair_statuses`: jobs whose last transition never reached their RelayJob (the replica that
  recorded it stopped before patching) are handed to this process's status writer.
- `prune`: ledger retention; jobs deleted and finished longer than the retention ago leave the
  ledger with their attempts, a small batch per statement with a pause between, so the hot path's
  statements never queue behind a long delete.
- `gauges`: the depth of each Redis set, for `relayjob_queue_depth`.
- `queues`: RelayQueues listed from the API server against Redis's limits and the ledger's
  QueueNotFound jobs (`runtime.queues`); `queue_status`: each known RelayQueue's status.
- `callbacks`: callback jobs owed by finished jobs whose outcome was recorded by a process that
  stopped before creating them (`runtime.callbacks`).
- `oldest`: the age of the oldest job ready to run, from the ledger (a scan of the backlog, so less
  often), for `relayjob_oldest_ready_age_seconds`.

A pass that fails for a server error is logged, counted (`relayjob_loop_errors_total{loop=...}`)
and tried again at its next period; nothing else stops the loops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from controller.adapters.ledger import Ledger
from controller.adapters.metrics import Metrics
from controller.adapters.queue import Queue
from controller.model.jobs import ClusterApi
from controller.model.phases import Phase
from controller.runtime.admission import placement_for
from controller.runtime.callbacks import Callbacks
from controller.runtime.clock import epoch_ms
from controller.runtime.first_list import FirstList
from controller.runtime.logs import job_fields
from controller.runtime.queues import Queues
from controller.runtime.retry import TRANSIENT, Throttle, throttled
from controller.runtime.status import StatusWriter

log = logging.getLogger("relayjob.maintenance")
ADMISSION_GRACE_SECONDS = 2.0
# A status write is normally under way for this long after a transition, by the replica that
# recorded it; only older ones are repaired, so a live replica's pending write is not doubled.
STATUS_REPAIR_GRACE_SECONDS = 10.0
# Each interval reads only the transitions of this window, so its cost does not grow with the
# number of finished jobs; once per SWEEP_SECONDS a pass reads them all (one scan of the ledger),
# for a status whose every write failed for longer than the window.
STATUS_REPAIR_WINDOW_SECONDS = 3600.0
# How often `rebuild` lists the cluster again after its first pass: a deletion the watch missed (a
# watch resumed too late for the API server's event history re-lists without reporting it) cancels
# its job within this long, where every interval's list cost grew with the finished RelayJobs.
SWEEP_SECONDS = 3600.0
PRUNE_BATCH = 500
PRUNE_PAUSE_SECONDS = 0.2
OLDEST_READY_SECONDS = 5.0


class Every:
    """Something a pass does once per `seconds` (monotonic clock), and at the first pass: due
    until `done` is told the time of the pass that did it (a failed pass leaves it due)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: float | None = None

    def due(self, now: float) -> bool:
        return self._last is None or now - self._last >= self.seconds

    def done(self, at: float) -> None:
        self._last = at


class Maintenance:
    def __init__(
        self,
        *,
        ledger: Ledger,
        queue: Queue,
        kube: ClusterApi,
        metrics: Metrics,
        status: StatusWriter,
        namespaces: Sequence[str],
        lease_seconds: float,
        interval: float,
        retention_seconds: float,
        forget: Callable[[UUID], Awaitable[None]],
        seen: Callable[[UUID], bool],
        queues: Queues,
        queue_status_seconds: float,
        callbacks: Callbacks,
    ) -> None:
        self.ledger = ledger
        self.queue = queue
        self.kube = kube
        self.metrics = metrics
        self.status = status
        self.namespaces = list(namespaces)
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.retention_seconds = retention_seconds
        self.forget = forget
        self.seen = seen
        self.sweeps = Every(SWEEP_SECONDS)  # lists of the cluster
        self.whole_repairs = Every(SWEEP_SECONDS)  # status repairs without a window
        self.queues = queues
        self.queue_status_seconds = queue_status_seconds
        self._queue_series: set[str] = set()
        self.callbacks = callbacks
        # Set (`expect_first_list`) when kopf's start-up list is to stand in for the first sweep's.
        self.first_list: FirstList | None = None

    async def expect_first_list(self, scopes: int) -> FirstList | None:
        """Read the ledger's live jobs now, before kopf starts, so that kopf's first complete list
        (`scopes` of them) serves the first sweep instead of a list of our own; None when the
        ledger cannot be read (the first sweep then lists the cluster itself)."""
        try:
            known = await self.ledger.live_uids()
        except TRANSIENT as error:  # it only costs the first sweep a list of its own
            log.warning("reading the ledger's live jobs failed (%s): the first sweep lists RelayJobs", error)
            return None
        self.first_list = FirstList(known, scopes)
        return self.first_list

    async def rebuild(self) -> int:
        """Put missing active jobs back; returns how many were re-queued."""
        exists = self.seen
        began = time.monotonic()
        sweep = self.sweeps.due(began)
        if sweep:
            live = await self._sweep()
            if live is None:
                sweep = False  # kopf's first list is under way: the watch's live set serves meanwhile
            else:
                exists = live.__contains__
        rows = await self.ledger.waiting()
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.lease_seconds)
        # A job Processing for less than one lease may be running right now on a worker whose
        # heartbeat will re-create its lease; re-queueing it would run it twice. A job admitted
        # a moment ago may not have reached Redis yet; its admission is placing it right now.
        fresh = now - timedelta(seconds=ADMISSION_GRACE_SECONDS)
        items = [
            placement_for(r.uid, r.priority, r.seq, r.next_attempt_at, r.queue_id)
            for r in rows
            if exists(r.uid)
            and (r.phase is not Phase.PROCESSING or (r.started_at or cutoff) <= cutoff)
            and (r.phase is not Phase.QUEUED or (r.queued_at or fresh) <= fresh)
        ]
        placed = await self.queue.place(items, epoch_ms(), only_missing=True)
        if placed:
            log.warning("re-queued %d jobs missing from Redis", placed)
            self.metrics.requeued.inc(placed)
        self.metrics.reconciles.inc()
        if sweep:
            self.sweeps.done(began)
        return placed

    async def _sweep(self) -> set[UUID] | None:
        """Cancel the ledger jobs whose RelayJob is gone; returns the RelayJobs that exist, or None
        while waiting for kopf's first list (`first_list`)."""
        # The ledger first, the API second: a row exists only after its RelayJob was created, so
        # a row missing from a list taken afterwards is truly gone. The other order cancels jobs
        # admitted between the two reads.
        first = self.first_list
        taken = first.take() if first is not None else None
        if first is not None and taken is None and time.monotonic() < first.deadline:
            return None
        self.first_list = None
        if taken is None:
            if first is not None:
                log.warning("kopf's first list of RelayJobs did not complete in time: listing them")
            known = await self.ledger.live_uids()
            live = await self.kube.list_job_uids(self.namespaces)
        else:
            known, live = taken
        for uid in known - live:
            row = await self.ledger.get(uid)
            if row is not None and self._watched(row.ref.namespace):
                await self.forget(uid)
        return live

    def _watched(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces

    async def reap(self) -> list[str]:
        """Return expired leases to `ready`; returns their uids."""
        expired = await self.queue.reap(epoch_ms())
        if expired:
            log.warning("%d leases expired; jobs returned to the queue", len(expired))
        return expired

    async def expire(self) -> int:
        """Delete RelayJobs past their TTL; returns how many the API server deleted."""
        deleted = 0
        for row in await self.ledger.ttl_due():
            if await self.kube.delete_job(row.ref):
                deleted += 1
                log.info("deleted after ttlSecondsAfterFinished", extra=job_fields(row.ref))
            await self.forget(row.ref.uid)
        return deleted

    async def repair_statuses(self) -> int:
        """Hand statuses behind the ledger to the status writer; returns how many."""
        began = time.monotonic()
        whole = self.whole_repairs.due(began)
        window = None if whole else STATUS_REPAIR_WINDOW_SECONDS
        behind = await self.ledger.statuses_behind(STATUS_REPAIR_GRACE_SECONDS, window)
        if whole:
            self.whole_repairs.done(began)
        if behind:
            log.warning("%d RelayJob statuses behind the ledger; writing them", len(behind))
            self.metrics.status_repairs.inc(len(behind))
            self.status.mark(behind)
        return len(behind)

    async def prune(self) -> int:
        """Apply ledger retention until nothing is due; returns how many jobs left the ledger."""
        pruned = 0
        while True:
            batch = await self.ledger.prune(self.retention_seconds, PRUNE_BATCH)
            pruned += batch
            if batch < PRUNE_BATCH:
                break
            await asyncio.sleep(PRUNE_PAUSE_SECONDS)
        if pruned:
            log.info("ledger retention: %d finished jobs removed", pruned)
        return pruned

    async def gauges(self) -> None:
        depth = await self.queue.depth()
        for name in ("ready", "delayed", "leased", "dead"):
            self.metrics.queue_depth.labels(name).set(getattr(depth, name))
        by_queue = await self.queue.queue_depths()
        for qid in self._queue_series - by_queue.keys():
            # A queue with nothing left in Redis leaves the metrics, so deleted queues do not linger.
            for name in ("ready", "delayed", "running"):
                self.metrics.queue_jobs.remove(*qid.split("/", 1), name)
        for qid, counts in by_queue.items():
            namespace, queue = qid.split("/", 1)
            for name in ("ready", "delayed", "running"):
                self.metrics.queue_jobs.labels(namespace, queue, name).set(getattr(counts, name))
        self._queue_series = set(by_queue)

    async def oldest(self) -> None:
        self.metrics.oldest_ready_age.set(await self.ledger.oldest_ready_age())

    async def run(self) -> None:
        await asyncio.gather(
            self._every("rebuild", self.interval, self.rebuild),
            self._every("reap", max(0.5, self.lease_seconds / 3), self.reap),
            self._every("ttl", 1.0, self.expire),
            self._every("statuses", self.interval, self.repair_statuses),
            self._every("prune", self.interval, self.prune),
            self._every("gauges", 2.0, self.gauges),
            self._every("queues", self.interval, self.queues.reconcile),
            self._every("queue_status", self.queue_status_seconds, self.queues.write_statuses),
            self._every("callbacks", self.interval, self.callbacks.sweep),
            self._every("oldest", OLDEST_READY_SECONDS, self.oldest),
            self._after_first_list(),
        )

    async def _after_first_list(self) -> None:
        """Sweep as soon as kopf's first list completes, not at the next interval."""
        first = self.first_list
        if first is None:
            return
        await first.done.wait()
        async with throttled(Throttle(self.interval, self.interval), self.metrics, "rebuild", logger=log):
            await self.rebuild()

    async def _every(self, loop: str, period: float, action: Callable[[], Awaitable[object]]) -> None:
        throttle = Throttle(period, period)  # a failed pass is simply tried again at the next period
        while True:
            async with throttled(throttle, self.metrics, loop, logger=log):
                await action()
            await asyncio.sleep(period)
