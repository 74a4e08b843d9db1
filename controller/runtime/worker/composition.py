"""The worker of one operator process: its stages wired together, and its graceful shutdown.

`run` runs the claim loop (claiming), the record loop (settling) and the heartbeat (leases) until
cancelled; `wake` and `cancel` serve admission; `drain` and `abandon` serve shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from uuid import UUID

from controller.adapters.metrics import Metrics
from controller.model.jobs import Executor
from controller.runtime.worker.announcing import Announcer
from controller.runtime.worker.capacity import Capacity
from controller.runtime.worker.claiming import Claiming
from controller.runtime.worker.executing import Attempts
from controller.runtime.worker.leases import Leases
from controller.runtime.worker.ports import CallbackSink, EventSink, StatusSink, WorkLedger, WorkQueue
from controller.runtime.worker.settling import Settling
from controller.settings import Settings

log = logging.getLogger("relayjob.worker")


async def _wait_until(deadline: float, tasks: Iterable[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
    """Wait for `tasks` until `deadline` (time.monotonic()); returns those still running."""
    waiting = set(tasks)
    if not waiting:
        return waiting
    _, pending = await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
    return pending


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        queue: WorkQueue,
        ledger: WorkLedger,
        executors: Mapping[str, Executor],
        status: StatusSink,
        events: EventSink,
        metrics: Metrics,
        callbacks: CallbackSink,
    ) -> None:
        self.executors = executors
        self._settings = settings
        self._leases = Leases(queue=queue, metrics=metrics, lease_seconds=settings.lease_seconds)
        capacity = Capacity(concurrency=settings.concurrency, claim_batch=settings.claim_batch)
        announcer = Announcer(events=events, metrics=metrics, callbacks=callbacks)
        self._settling = Settling(
            ledger=ledger,
            queue=queue,
            leases=self._leases,
            status=status,
            announcer=announcer,
            metrics=metrics,
            grace_seconds=settings.shutdown_grace_seconds,
        )
        self._attempts = Attempts(
            executors=executors,
            concurrency=settings.concurrency,
            capacity=capacity,
            leases=self._leases,
            ended=self._settling.put,
            metrics=metrics,
        )
        self._claiming = Claiming(
            queue=queue,
            ledger=ledger,
            leases=self._leases,
            capacity=capacity,
            attempts=self._attempts,
            settling=self._settling,
            status=status,
            announcer=announcer,
            metrics=metrics,
            lease_seconds=settings.lease_seconds,
            poll_interval_seconds=settings.poll_interval_seconds,
        )
        self._claim_loop: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """New work was queued by this process: claim now instead of at the next poll."""
        self._claiming.wake()

    def cancel(self, uid: UUID) -> bool:
        """Stop `uid`'s attempt, if one runs here, without recording it (the job was deleted)."""
        return self._attempts.cancel(uid)

    async def run(self) -> None:
        """Claim, settle and heartbeat until cancelled; after `drain` only the claim loop has ended."""
        self._claim_loop = asyncio.ensure_future(self._claiming.run())
        await asyncio.gather(self._claim_loop, self._settling.run(), self._leases.heartbeat())

    async def drain(self, grace_ends: float, gives_up: float) -> None:
        """Graceful shutdown, while `run` goes on: claim nothing more and hand back the work leased
        ahead, let the attempts in flight finish until `grace_ends` and cut off those still running,
        then wait until every outcome is recorded (at the latest until `gives_up`; both are
        time.monotonic()). Meanwhile the heartbeat renews the leases of the attempts running, and
        settling records each outcome and takes its job out of `leased`.

        An attempt being opened when shutdown begins starts and runs: it is counted in the ledger
        already, and work is opened ahead of the free slots only while attempts take ~0.1 s."""
        self._claiming.stop()
        await _wait_until(grace_ends, [self._claim_loop] if self._claim_loop is not None else [])
        await _wait_until(grace_ends, self._claiming.opening)
        handed_back = await self._claiming.hand_back_leased_ahead()
        log.info(
            "shutting down: %d attempts in flight, %d jobs leased ahead handed back",
            len(self._attempts.running),
            handed_back,
        )
        late = await _wait_until(grace_ends, self._attempts.running)
        if late:
            # Left to its lease, an attempt cut off here would wait out the lease before another
            # replica ran it, and would then be recorded as lost with reason LeaseExpired, which
            # it was not. Recorded now (core.transitions.cut_off), its job is due again at once
            # and the record says what happened.
            log.warning(
                "%d attempts still running after the %gs shutdown grace: stopping and recording them",
                len(late),
                self._settings.shutdown_grace_seconds,
            )
            self._attempts.cut_off(late)
            await _wait_until(gives_up, late)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, gives_up - time.monotonic())):
                await self._settling.join()
        if self._leases.held:
            log.error(
                "%d outcomes could not be recorded before exit; their leases lapse within %gs and "
                "the jobs run again",
                len(self._leases.held),
                self._settings.lease_seconds,
            )

    async def abandon(self) -> None:
        """Stop whatever still runs without recording it (closing without a drain, as after a
        failure): the leases lapse and the jobs run again, as after a crash."""
        tasks = [*self._claiming.opening, *self._attempts.running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
