"""Where jobs are claimed, executed, retried and dead-lettered.

claim    `_claim_loop`: an atomic Lua claim leases up to the free slots, then the ledger opens
         the attempts (stale ids are dropped here, lease-expired ones counted and maybe
         dead-lettered).
execute  `_attempt`: the executor runs under the per-attempt timeout while `_heartbeat`
         renews every held lease in one call.
record   `_settle_loop`: outcomes are written to the ledger in batches, fenced by attempt;
         `core.lifecycle.after_attempt` chose Completed, Retrying (with backoff) or DeadLettered;
         Redis is updated to match, and the status writer is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from uuid import UUID

from controller.adapters.ledger import Ledger, Settle
from controller.adapters.metrics import Metrics
from controller.adapters.queue import Queue
from controller.core.lifecycle import after_attempt
from controller.model.jobs import AttemptContext, ExecutionResult, Executor, JobRow, Outcome
from controller.model.phases import Phase
from controller.runtime.events import EventPoster
from controller.runtime.logs import job_fields
from controller.runtime.retry import TRANSIENT, until_done
from controller.runtime.status import StatusWriter
from controller.settings import Settings

log = logging.getLogger("relayjob.worker")

SETTLE_BATCH = 256


def _ms(ts: float | None = None) -> int:
    return int((time.time() if ts is None else ts) * 1000)


@dataclass
class _Done:
    row: JobRow
    result: ExecutionResult
    seconds: float


class Worker:
    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        ledger: Ledger,
        executors: dict[str, Executor],
        status: StatusWriter,
        events: EventPoster,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.ledger = ledger
        self.executors = executors
        self.status = status
        self.events = events
        self.metrics = metrics
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._held: set[str] = set()
        self._leases = asyncio.Lock()  # orders lease renewals against lease removals
        self._running: dict[UUID, asyncio.Task[None]] = {}
        self._done: asyncio.Queue[_Done] = asyncio.Queue()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New work was queued by this process: claim now instead of at the next poll."""
        self._wake.set()

    def cancel(self, uid: UUID) -> bool:
        task = self._running.get(uid)
        if task is None:
            return False
        task.cancel()
        return True

    async def run(self) -> None:
        await asyncio.gather(self._claim_loop(), self._settle_loop(), self._heartbeat())

    async def _claim_loop(self) -> None:
        lease_ms = int(self.settings.lease_seconds * 1000)
        idle, backoff = 0.005, 0.1
        while True:
            await self._slots.acquire()
            free = 1
            while free < self.settings.claim_batch and not self._slots.locked():
                await self._slots.acquire()
                free += 1
            try:
                uids = await self.queue.claim(free, _ms(), lease_ms)
                self._held.update(uids)
                started = await self._start(uids) if uids else 0
            except TRANSIENT as error:
                log.warning("claim failed, retrying in %.1fs: %s", backoff, error)
                self.metrics.errors.labels("claim").inc()
                self._release_slots(free)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                continue
            backoff = 0.1
            self._release_slots(free - started)
            if uids:
                idle = 0.005
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._wake.wait()
            idle = min(idle * 2, self.settings.poll_interval_seconds)

    def _release_slots(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _start(self, uids: list[str]) -> int:
        try:
            batch = await self.ledger.start_attempts(uids)
        except TRANSIENT:
            await self.queue.release(uids)
            self._held.difference_update(uids)
            raise
        if batch.stale:
            # A queued id whose ledger row is gone, finished or deleted: the seed incident's
            # "job not found" case. Skip it, count it, remove it; never stop the loop for it.
            for uid in batch.stale:
                log.warning(
                    "skipping stale queue entry %s: no active ledger row", uid, extra={"job": {"uid": uid}}
                )
            self.metrics.stale.inc(len(batch.stale))
            await self.queue.remove(batch.stale)
            self._held.difference_update(batch.stale)
        if batch.exhausted:
            now = _ms()
            await self.queue.settle(dead=[(str(r.ref.uid), now) for r in batch.exhausted])
            self._held.difference_update(str(r.ref.uid) for r in batch.exhausted)
            for row in batch.exhausted:
                self._announce(row)
        self.metrics.attempts.inc(len(batch.started))
        self.status.mark(r.ref.uid for r in batch.started)
        for row in batch.started:
            self._running[row.ref.uid] = asyncio.create_task(self._attempt(row))
        return len(batch.started)

    async def _attempt(self, row: JobRow) -> None:
        uid = row.ref.uid
        self.metrics.inflight.inc()
        began = time.monotonic()
        ctx = AttemptContext(
            ref=row.ref,
            spec=row.spec,
            attempt=row.attempts,
            idempotency_key=row.spec.nullifier or str(uid),
        )
        try:
            result = await self._execute(ctx)
        except asyncio.CancelledError:
            # Deleted while in flight: the ledger marks it cancelled; nothing to record here.
            self._held.discard(str(uid))
            return
        finally:
            self.metrics.inflight.dec()
            self._running.pop(uid, None)
            self._slots.release()
        self._done.put_nowait(_Done(row, result, time.monotonic() - began))

    async def _execute(self, ctx: AttemptContext) -> ExecutionResult:
        executor = self.executors[ctx.spec.target.executor]
        try:
            async with asyncio.timeout(ctx.spec.timeout_seconds):
                return await executor.execute(ctx)
        except TimeoutError:
            return ExecutionResult(
                outcome=Outcome.RETRYABLE,
                reason="Timeout",
                message=f"no result within {ctx.spec.timeout_seconds:g}s",
            )
        except Exception as error:  # a plug-in executor's bug must not kill the loop
            log.exception("executor %s raised", ctx.spec.target.executor, extra=job_fields(ctx.ref))
            return ExecutionResult(
                outcome=Outcome.RETRYABLE,
                reason="ExecutorError",
                message=f"{type(error).__name__} in executor",
            )

    async def _settle_loop(self) -> None:
        while True:
            pending = [await self._done.get()]
            while len(pending) < SETTLE_BATCH and not self._done.empty():
                pending.append(self._done.get_nowait())
            # Leases stay held and renewed while this waits out an outage: no outcome is lost.
            await until_done(
                partial(self._settle, pending), "settle", self.metrics, first_delay=0.1, retry_on=TRANSIENT
            )

    async def _settle(self, done: list[_Done]) -> None:
        now = datetime.now(UTC)
        items = []
        for d in done:
            decision = after_attempt(d.row, d.row.attempts, d.result, now)
            items.append(
                Settle(
                    uid=d.row.ref.uid,
                    run=d.row.run,
                    attempt=d.row.attempts,
                    phase=decision.phase,
                    reason=decision.reason,
                    message=decision.message,
                    outcome=d.result.outcome.value,
                    next_attempt_at=decision.next_attempt_at,
                    result=decision.result,
                    error=decision.error,
                )
            )
        recorded = {r.ref.uid: r for r in await self.ledger.settle(items)}
        finished, retry, dead = [], [], []
        for d in done:
            uid = str(d.row.ref.uid)
            row = recorded.get(d.row.ref.uid)
            self.metrics.attempt_seconds.labels(d.result.outcome.value).observe(d.seconds)
            if row is None:
                self.metrics.fenced.inc()
                log.warning(
                    "outcome of attempt %d discarded: the job was re-claimed or deleted",
                    d.row.attempts,
                    extra=job_fields(d.row.ref),
                )
                continue
            if row.phase is Phase.COMPLETED:
                finished.append(uid)
            elif row.phase is Phase.RETRYING:
                assert row.next_attempt_at is not None
                retry.append((uid, _ms(row.next_attempt_at.timestamp())))
            else:
                dead.append((uid, _ms()))
        # The ledger has committed: from here on nothing may send these outcomes through the ledger
        # again (a second settle is fenced out and would look like a lost race), so the status
        # is told now and only the Redis step is retried until it succeeds.
        self.status.mark(recorded)
        for row in recorded.values():
            self._announce(row)
        await until_done(
            partial(self._settle_redis, done, finished, retry, dead),
            "settle-redis",
            self.metrics,
            first_delay=0.1,
            retry_on=TRANSIENT,
        )

    async def _settle_redis(
        self,
        done: list[_Done],
        finished: list[str],
        retry: list[tuple[str, int]],
        dead: list[tuple[str, int]],
    ) -> None:
        # Under the lease lock: a heartbeat's ZADD landing after this settle would put a recorded
        # (perhaps retrying) job back into `leased`, and the reaper would run it early. Outcomes
        # leave `_held` in the same critical section.
        async with self._leases:
            await self.queue.settle(done=finished, retry=retry, dead=dead)
            self._held.difference_update(str(d.row.ref.uid) for d in done)

    def _announce(self, row: JobRow) -> None:
        fields = job_fields(row.ref) | {"phase": row.phase.value, "attempts": row.attempts}
        if row.phase is Phase.COMPLETED:
            self.metrics.jobs.labels("completed").inc()
            log.info("job completed", extra=fields)
            self.events.post(row.ref, "Normal", "Completed", row.message or "completed")
        elif row.phase is Phase.RETRYING:
            self.metrics.retries.inc()
            log.info("retry scheduled: %s", row.message, extra=fields)
            self.events.post(row.ref, "Warning", "Retrying", row.message or "retrying")
        elif row.phase is Phase.DEAD_LETTERED:
            self.metrics.jobs.labels("dead_lettered").inc()
            log.warning("job dead-lettered: %s", row.message, extra=fields)
            self.events.post(row.ref, "Warning", "DeadLettered", row.message or "dead-lettered")

    async def _heartbeat(self) -> None:
        period = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(period)
            if not self._held:
                continue
            try:
                async with self._leases:
                    await self.queue.renew(list(self._held), _ms() + int(self.settings.lease_seconds * 1000))
            except TRANSIENT as error:
                log.warning("lease renewal failed: %s", error)
                self.metrics.errors.labels("heartbeat").inc()

    async def drain(self) -> None:
        """Stop taking work and let attempts in flight finish (graceful shutdown)."""
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=self.settings.lease_seconds)
