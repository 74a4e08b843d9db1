"""The leases this process holds in Redis, the heartbeat that renews them, and their end.

A claim leases a job in Redis until an epoch-ms deadline (`leased`); a lease that is not renewed
lapses, and maintenance's reaper then queues the job again. Guarantees:

- Every uid `hold` was given stays renewed, to now + `lease_seconds`, every `lease_seconds / 3`,
  until it is ended (`end`, `end_or_lapse`) or dropped (`drop`).
- A renewal never brings back a lease that ended: a renewal is a plain ZADD (after a Redis loss it
  re-creates the lease on purpose), so renewing and every step that takes uids out of `leased`
  hold one lock, and uids stop being renewed inside it.
- `end` raises what its step raises, and the leases then stay held and renewed: nothing is lost
  while the caller retries. `end_or_lapse` never raises for a server error: it logs and counts it
  (loop "release"), and the leases, no longer renewed, lapse within `lease_seconds`.
- A failed renewal is logged and counted (loop "heartbeat") and tried again at the next beat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable

from controller.adapters.metrics import Metrics
from controller.runtime.clock import epoch_ms
from controller.runtime.retry import TRANSIENT, Throttle, throttled
from controller.runtime.worker.ports import WorkQueue

log = logging.getLogger("relayjob.worker")


class Leases:
    def __init__(self, *, queue: WorkQueue, metrics: Metrics, lease_seconds: float) -> None:
        self._queue = queue
        self._metrics = metrics
        self.lease_seconds = lease_seconds
        self._held: set[str] = set()
        self._lock = asyncio.Lock()

    @property
    def held(self) -> frozenset[str]:
        """The uids whose leases this process renews."""
        return frozenset(self._held)

    def hold(self, uids: Iterable[str]) -> None:
        """Renew these leases, just claimed, from the next beat on."""
        self._held.update(uids)

    def drop(self, uid: str) -> None:
        """Stop renewing `uid`'s lease and leave it to lapse (an attempt that ends unrecorded)."""
        self._held.discard(uid)

    async def end(self, uids: Collection[str], step: Callable[[], Awaitable[object]]) -> None:
        """Take `uids` out of Redis's `leased` with `step`, then stop renewing them. Raises what
        `step` raises; the leases are then still held."""
        async with self._lock:
            await step()
            self._held.difference_update(uids)

    async def end_or_lapse(self, uids: Collection[str], step: Callable[[], Awaitable[object]]) -> None:
        """Stop renewing `uids` and take them out of `leased` with `step`. A step that fails for a
        server error is only logged: the leases lapse and the reaper queues the jobs again (or finds
        them stale) within a lease period."""
        async with self._lock:
            self._held.difference_update(uids)
            try:
                await step()
            except TRANSIENT as error:
                log.warning("returning %d leases failed; they will lapse: %s", len(uids), error)
                self._metrics.errors.labels("release").inc()

    async def renew(self) -> None:
        """Extend every held lease to now + `lease_seconds`, in one call. Raises what Redis raises."""
        if not self._held:
            return
        async with self._lock:
            await self._queue.renew(list(self._held), epoch_ms() + int(self.lease_seconds * 1000))

    async def heartbeat(self) -> None:
        """Renew every `lease_seconds / 3` until cancelled."""
        period = self.lease_seconds / 3
        throttle = Throttle(period, period)  # a failed beat is simply tried again at the next one
        while True:
            await asyncio.sleep(period)
            async with throttled(throttle, self._metrics, "heartbeat", what="lease renewal", logger=log):
                await self.renew()
