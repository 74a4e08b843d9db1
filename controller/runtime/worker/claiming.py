"""Taking work: leasing jobs in Redis ahead of the free slots, and opening their attempts.

The claim loop leases jobs with the atomic Lua claim (`Queue.claim`) into a stock leased ahead of
the free slots, and opens their attempts in the ledger in batches (`Ledger.start_attempts`), each
batch in a task of its own. Guarantees:

- One claim asks for at most `claim_batch` jobs, and only while the stock is short of what the
  free slots and the prefetch take (`Capacity`); every uid it returns is held by `Leases` (renewed)
  from then on, until it is acked, handed back or dropped.
- At most OPEN_PIPELINE batches are being opened at once: slots freed while a batch is opened get
  a batch of their own, so a slot never waits for two.
- What opening finds: started attempts are run (`Attempts.start`) and shown; ids with no active
  ledger row (stale) are counted and removed from Redis; jobs whose lost lease used their last
  attempt are dead-lettered (acked as dead) and announced; jobs suspended meanwhile are removed
  from Redis and announced. A batch the ledger fails to open is handed back (nacked) and opening
  pauses (loop "claim", capped backoff); a failed claim pauses the same way.
- A claim that left jobs behind for a queue's rate limit is followed by the next one when that
  limit allows a start again (`Claimed.retry_at_ms`), not at the next poll. Each claim counts, by
  queue, the jobs it took and the limits that held jobs back (`relayjob_queue_dispatches_total`,
  `relayjob_queue_throttled_claims_total`).
- While a batch of outcomes waits to be recorded (`Settling.full`), nothing new is opened: an
  unrecorded outcome is work a crash redoes.
- After `stop`, nothing more is claimed or opened (a batch being opened when it came starts and
  runs: it is counted in the ledger already); `hand_back_leased_ahead` nacks the stock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection, Sequence

from controller.adapters.metrics import Metrics
from controller.adapters.queue import Claimed
from controller.model.jobs import JobRow
from controller.runtime.clock import epoch_ms
from controller.runtime.retry import Throttle, throttled
from controller.runtime.worker.announcing import Announcer
from controller.runtime.worker.capacity import Capacity
from controller.runtime.worker.executing import Attempts
from controller.runtime.worker.leases import Leases
from controller.runtime.worker.ports import StatusSink, WorkLedger, WorkQueue
from controller.runtime.worker.settling import Settling

log = logging.getLogger("relayjob.worker")

OPEN_PIPELINE = 4
IDLE_SECONDS = 0.005  # the first wait for work after a claim found none; doubles up to the poll interval
FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS = 0.1, 10.0


class Claiming:
    def __init__(
        self,
        *,
        queue: WorkQueue,
        ledger: WorkLedger,
        leases: Leases,
        capacity: Capacity,
        attempts: Attempts,
        settling: Settling,
        status: StatusSink,
        announcer: Announcer,
        metrics: Metrics,
        lease_seconds: float,
        poll_interval_seconds: float,
    ) -> None:
        self._queue = queue
        self._ledger = ledger
        self._leases = leases
        self._capacity = capacity
        self._attempts = attempts
        self._settling = settling
        self._status = status
        self._announcer = announcer
        self._metrics = metrics
        self._lease_ms = int(lease_seconds * 1000)
        self._poll_interval_seconds = poll_interval_seconds
        self._leased_ahead: deque[str] = deque()  # leased in Redis ahead of a free slot; no attempt yet
        self._openers = asyncio.Semaphore(OPEN_PIPELINE)
        self._opening: set[asyncio.Task[None]] = set()
        self._claim_throttle = Throttle(FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS)
        self._open_throttle = Throttle(FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS)
        self._wake = asyncio.Event()
        self._retry_at_ms: int | None = None  # when the last claim's skipped rate limit frees a start
        self._stopping = asyncio.Event()  # shutdown began: claim nothing more

    @property
    def opening(self) -> Collection[asyncio.Task[None]]:
        """The tasks opening batches of attempts right now."""
        return list(self._opening)

    def wake(self) -> None:
        """New work was queued: claim now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Claim and open nothing more; wherever the loop waits, it wakes up and ends."""
        self._stopping.set()
        self._wake.set()
        self._capacity.wake()
        self._settling.wake()

    async def run(self) -> None:
        """The claim loop, until `stop`."""
        idle = IDLE_SECONDS
        while not self._stopping.is_set():
            if self._settling.full():
                await self._settling.wait_recorded()
                continue
            free = self._capacity.free()
            if free <= 0:
                await self._capacity.wait_for_room()
                continue
            async with throttled(self._claim_throttle, self._metrics, "claim", logger=log):
                drained = await self._lease_ahead(free)
            if self._claim_throttle.active:
                await self._claim_throttle.pause(self._stopping)
                continue
            took = await self._open_leased_ahead()
            await self._open_throttle.pause(self._stopping)
            if took or self._leased_ahead:
                idle = IDLE_SECONDS
                # Claiming again at once after a claim that drained `ready` would find it empty:
                # in a stream of admissions that was every other claim. Wait for a wake-up.
                if self._leased_ahead or not drained:
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._until_retry(idle)):
                    await self._wake.wait()
            idle = min(idle * 2, self._poll_interval_seconds)

    async def hand_back_leased_ahead(self) -> int:
        """Nack the jobs leased ahead and never opened; returns how many."""
        stock = list(self._leased_ahead)
        self._leased_ahead.clear()
        if stock:
            await self._leases.end_or_lapse(stock, lambda: self._queue.nack(stock))
        return len(stock)

    async def _lease_ahead(self, free: int) -> bool:
        """Lease work into the stock when it runs short of the free slots and the work taken
        ahead; True when the claim got less than it asked for, so `ready` is empty."""
        prefetch = self._capacity.prefetch()
        if len(self._leased_ahead) >= free + prefetch // 2:
            return False
        want = min(self._capacity.claim_batch, free + prefetch - len(self._leased_ahead))
        # Cleared before the claim, not after: a job queued while the claim is out may have
        # missed it, and its wake-up must not be lost.
        self._wake.clear()
        claimed = await self._queue.claim(want, epoch_ms(), self._lease_ms)
        self._retry_at_ms = claimed.retry_at_ms
        self._count(claimed)
        uids = claimed.uids
        self._leases.hold(uids)
        self._leased_ahead.extend(uids)
        return len(uids) < want

    def _count(self, claimed: Claimed) -> None:
        for qid, n in claimed.dispatched.items():
            self._metrics.queue_dispatches.labels(*qid.split("/", 1)).inc(n)
        for qid, n in claimed.throttled.items():
            self._metrics.queue_throttled.labels(*qid.split("/", 1)).inc(n)

    def _until_retry(self, idle: float) -> float:
        """Seconds to wait for work: `idle`, or less when the last claim left a rate-limited
        queue's jobs behind and its next start comes sooner; a rate is then kept to the
        millisecond, not to the poll."""
        if self._retry_at_ms is None:
            return idle
        return max(0.0, min(idle, (self._retry_at_ms - epoch_ms()) / 1000))

    async def _open_leased_ahead(self) -> bool:
        """Open attempts for as much of the stock as the slots take, in a task of their own; True
        when it took some."""
        await self._openers.acquire()
        # Shutdown may have begun while this waited: what is opened now would start after it.
        n = 0 if self._stopping.is_set() else min(self._capacity.free(), len(self._leased_ahead))
        take = [self._leased_ahead.popleft() for _ in range(n)]
        if not take:
            self._openers.release()
            return False
        self._capacity.opened(len(take))
        opening = asyncio.create_task(self._open(take))
        self._opening.add(opening)
        opening.add_done_callback(self._opening.discard)
        return True

    async def _open(self, uids: list[str]) -> None:
        started = 0
        try:
            # A task of its own: whatever stops it must be said here, or it is lost.
            async with throttled(
                self._open_throttle,
                self._metrics,
                "claim",
                what="opening attempts",
                errors=(Exception,),
                logger=log,
            ):
                started = await self._start(uids)
        finally:
            self._openers.release()
            self._capacity.closed(len(uids) - started)

    async def _start(self, uids: list[str]) -> int:
        """Open the attempts of `uids` and start them; returns how many started."""
        try:
            batch = await self._ledger.start_attempts(uids)
        except Exception:
            # Not opened: stop renewing these leases and hand them back; if Redis is away too,
            # the leases lapse and the reaper queues the jobs again.
            await self._leases.end_or_lapse(uids, lambda: self._queue.nack(uids))
            raise
        # Opened in the ledger: these run whatever happens to the clean-up below.
        self._metrics.attempts.inc(len(batch.started))
        for seconds in batch.waited:
            self._metrics.queue_wait.observe(seconds)
        self._status.offer(batch.started)
        for row in batch.started:
            self._attempts.start(row)
        await self._skip_stale(batch.stale)
        await self._dead_letter(batch.exhausted)
        await self._remove_suspended(batch.suspended)
        return len(batch.started)

    async def _skip_stale(self, uids: Sequence[str]) -> None:
        """Queued ids whose ledger row is gone, finished or deleted: the seed incident's "job not
        found" case. Skip them, count them, remove them; never stop the loop for them."""
        if not uids:
            return
        for uid in uids:
            log.warning(
                "skipping stale queue entry %s: no active ledger row", uid, extra={"job": {"uid": uid}}
            )
        self._metrics.stale.inc(len(uids))
        await self._leases.end_or_lapse(uids, lambda: self._queue.remove(uids))

    async def _dead_letter(self, rows: Sequence[JobRow]) -> None:
        """Jobs whose last attempt lost its lease, dead-lettered by the ledger as it found them."""
        if not rows:
            return
        now_ms = epoch_ms()
        dead = [(str(r.ref.uid), now_ms) for r in rows]
        await self._leases.end_or_lapse([uid for uid, _ in dead], lambda: self._queue.ack(dead=dead))
        self._show(rows)

    async def _remove_suspended(self, rows: Sequence[JobRow]) -> None:
        """Suspended while their attempt ran, whose worker then died: out of the queue until resumed."""
        if not rows:
            return
        uids = [str(r.ref.uid) for r in rows]
        await self._leases.end_or_lapse(uids, lambda: self._queue.remove(uids))
        self._show(rows)

    def _show(self, rows: Sequence[JobRow]) -> None:
        self._status.offer(rows)
        for row in rows:
            self._announcer.announce(row)
