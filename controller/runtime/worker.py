"""Where jobs are claimed, executed, retried and dead-lettered.

claim    `_claim_loop`: an atomic Lua claim leases jobs in Redis, then the ledger opens their
         attempts in batches (stale ids are dropped here, lease-expired ones counted and maybe
         dead-lettered). While jobs finish fast, work is taken a little ahead of the free
         slots, at most ~PREFETCH_HORIZON seconds of it and at most `claim_batch` jobs: Redis
         leases, and attempts opened in the ledger that wait for a slot. Without it every
         slot would wait for a durable commit between two short jobs. The price: a crash
         counts an attempt for the jobs opened ahead in its last ~PREFETCH_HORIZON, which had
         not started yet (they are re-queued like the jobs in flight).
execute  `_attempt`: the executor runs under the per-attempt timeout while `_heartbeat`
         renews every held lease in one call.
record   `_settle_loop`: outcomes are written to the ledger in batches, fenced by attempt;
         `core.lifecycle.after_attempt` chose Completed, Retrying (with backoff) or DeadLettered;
         Redis is updated to match, and the status writer is told.
stop     `drain` (SIGTERM): the claim loop stops and work leased ahead goes back to `ready`; attempts
         in flight finish within the shutdown grace while the settle loop records them and the
         heartbeat renews their leases; what is still running then is cut off and recorded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from uuid import UUID

from controller.adapters.ledger import Ledger, Settle
from controller.adapters.metrics import Metrics
from controller.adapters.queue import Queue
from controller.core.lifecycle import after_attempt, cut_off_decision
from controller.model.jobs import AttemptContext, ExecutionResult, Executor, JobRow, Outcome
from controller.model.phases import Phase
from controller.runtime.events import EventPoster
from controller.runtime.logs import job_fields
from controller.runtime.retry import TRANSIENT, until_done
from controller.runtime.status import StatusWriter
from controller.settings import Settings

log = logging.getLogger("relayjob.worker")

SETTLE_BATCH = 256
SETTLE_WINDOW = 0.005
# Lease ahead of the free slots only as much work as the running jobs get through in this long
# (judged by recent attempt durations): a job leased ahead waits at most about that long to start.
PREFETCH_HORIZON = 0.1
OPEN_PIPELINE = 4


def _ms(ts: float | None = None) -> int:
    return int((time.time() if ts is None else ts) * 1000)


@dataclass
class _Done:
    row: JobRow
    result: ExecutionResult | None  # None: cut off at shutdown, its outcome unknown
    seconds: float

    @property
    def outcome(self) -> str:
        return "lost" if self.result is None else self.result.outcome.value


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
        self._opened = 0  # attempts opened and not yet finished, running or about to
        self._room = asyncio.Event()  # an opened attempt finished
        self._settled = asyncio.Event()  # a batch of outcomes was recorded
        self._stock: deque[str] = deque()  # leased in Redis ahead of a free slot; no attempt yet
        self._openers = asyncio.Semaphore(OPEN_PIPELINE)
        self._opening: set[asyncio.Task[None]] = set()
        self._open_backoff, self._open_backoff_until = 0.1, 0.0
        self._job_seconds = 1.0  # moving average of attempt durations; no stock until it is short
        self._held: set[str] = set()
        # Held by the heartbeat while it renews, and by every step that takes uids out of Redis's
        # `leased` and out of `_held`: a renewal (a plain ZADD) sent after such a step would
        # otherwise put a finished job back into `leased`.
        self._leases = asyncio.Lock()
        self._running: dict[UUID, asyncio.Task[None]] = {}
        self._done: asyncio.Queue[_Done] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._claiming: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()  # shutdown began: claim nothing more
        self._cutting_off = False  # the shutdown grace ran out: attempts cancelled now are recorded

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
        """Claim, settle and heartbeat until cancelled; after `drain` only the claim loop has ended."""
        self._claiming = asyncio.ensure_future(self._claim_loop())
        await asyncio.gather(self._claiming, self._settle_loop(), self._heartbeat())

    def _prefetch(self) -> int:
        """Work to take beyond the free slots: what the running jobs finish in PREFETCH_HORIZON."""
        if self._job_seconds >= PREFETCH_HORIZON:
            return 0
        ahead = int(self.settings.concurrency * PREFETCH_HORIZON / max(self._job_seconds, 1e-4))
        return min(self.settings.claim_batch, ahead)

    def _free(self) -> int:
        """Attempts that may still be opened: the slots, plus the work taken ahead, minus those open."""
        return self.settings.concurrency + self._prefetch() - self._opened

    def _finished(self, n: int = 1) -> None:
        self._opened -= n
        self._room.set()

    async def _nap(self, seconds: float) -> None:
        """Sleep, but no longer than until shutdown begins."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _claim_loop(self) -> None:
        lease_ms = int(self.settings.lease_seconds * 1000)
        idle, backoff = 0.005, 0.1
        while not self._stopping.is_set():
            if self._done.qsize() >= SETTLE_BATCH:
                # Outcomes are piling up faster than the ledger records them: open no more
                # attempts until they are recorded (an unrecorded outcome is work a crash redoes).
                self._settled.clear()
                await self._settled.wait()
                continue
            free = self._free()
            if free <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                drained = await self._restock(free, lease_ms)
            except TRANSIENT as error:
                log.warning("claim failed, retrying in %.1fs: %s", backoff, error)
                self.metrics.errors.labels("claim").inc()
                await self._nap(backoff)
                backoff = min(backoff * 2, 10)
                continue
            took = await self._open_stock()
            pause = self._open_backoff_until - time.monotonic()
            if pause > 0:
                await self._nap(pause)
            backoff = 0.1
            if took or self._stock:
                idle = 0.005
                # Claiming again at once after a claim that drained `ready` would find it empty:
                # in a stream of admissions that was every other claim. Wait for a wake-up.
                if self._stock or not drained:
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._wake.wait()
            idle = min(idle * 2, self.settings.poll_interval_seconds)

    async def _restock(self, free: int, lease_ms: int) -> bool:
        """Lease work into the stock when it runs short of the free slots and the work taken
        ahead; True when the claim got less than it asked for, so `ready` is empty."""
        prefetch = self._prefetch()
        if len(self._stock) >= free + prefetch // 2:
            return False
        want = min(self.settings.claim_batch, free + prefetch - len(self._stock))
        # Cleared before the claim, not after: a job queued while the claim is out may have
        # missed it, and its wake-up must not be lost.
        self._wake.clear()
        uids = await self.queue.claim(want, _ms(), lease_ms)
        self._held.update(uids)
        self._stock.extend(uids)
        return len(uids) < want

    async def _open_stock(self) -> bool:
        """Open attempts for as much of the stock as the slots take; True when it took some.

        Slots freed while an earlier batch was being opened get a batch of their own at once:
        up to OPEN_PIPELINE openings are in flight, so a slot never waits for two."""
        await self._openers.acquire()
        # Shutdown may have begun while this waited: what is opened now would start after it.
        n = 0 if self._stopping.is_set() else min(self._free(), len(self._stock))
        take = [self._stock.popleft() for _ in range(n)]
        if not take:
            self._openers.release()
            return False
        self._opened += len(take)
        opening = asyncio.create_task(self._open(take))
        self._opening.add(opening)
        opening.add_done_callback(self._opening.discard)
        return True

    async def _open(self, uids: list[str]) -> None:
        """Open the attempts of `uids` and start them; the claim loop goes on meanwhile."""
        started = 0
        try:
            started = await self._start(uids)
            self._open_backoff = 0.1
        except Exception as error:
            # This runs as a task of its own: whatever stops it must be said here, or it is lost.
            if isinstance(error, TRANSIENT):
                log.warning("opening attempts failed, pausing %.1fs: %s", self._open_backoff, error)
            else:
                log.exception("opening attempts failed, pausing %.1fs", self._open_backoff)
            self.metrics.errors.labels("claim").inc()
            self._open_backoff_until = time.monotonic() + self._open_backoff
            self._open_backoff = min(self._open_backoff * 2, 10)
        finally:
            self._openers.release()
            self._finished(len(uids) - started)

    async def _start(self, uids: list[str]) -> int:
        try:
            batch = await self.ledger.start_attempts(uids)
        except Exception:
            # Not opened: stop renewing these leases and hand them back; if Redis is away too,
            # the leases lapse and the reaper re-queues the jobs.
            await self._let_go(uids, self.queue.release)
            raise
        # Opened in the ledger: these run whatever happens to the clean-up below.
        self.metrics.attempts.inc(len(batch.started))
        self.status.offer(batch.started)
        for row in batch.started:
            self._running[row.ref.uid] = asyncio.create_task(self._attempt(row))
        if batch.stale:
            # A queued id whose ledger row is gone, finished or deleted: the seed incident's
            # "job not found" case. Skip it, count it, remove it; never stop the loop for it.
            for uid in batch.stale:
                log.warning(
                    "skipping stale queue entry %s: no active ledger row", uid, extra={"job": {"uid": uid}}
                )
            self.metrics.stale.inc(len(batch.stale))
            await self._let_go(batch.stale, self.queue.remove)
        if batch.exhausted:
            now = _ms()
            dead = [(str(r.ref.uid), now) for r in batch.exhausted]
            await self._let_go([uid for uid, _ in dead], lambda _: self.queue.settle(dead=dead))
            self.status.offer(batch.exhausted)
            for row in batch.exhausted:
                self._announce(row)
        if batch.suspended:
            # Suspended while their attempt ran, whose worker then died: out of the queue until resumed.
            await self._let_go([str(r.ref.uid) for r in batch.suspended], self.queue.remove)
            self.status.offer(batch.suspended)
            for row in batch.suspended:
                self._announce(row)
        return len(batch.started)

    async def _let_go(self, uids: list[str], step: Callable[[list[str]], Awaitable[object]]) -> None:
        """Take `uids` out of `leased` with `step`, and out of the renewed set, under the lease lock.
        A failed `step` is only logged: the leases are no longer renewed, so they lapse and the
        reaper puts the jobs back (or finds them stale) within a lease period."""
        async with self._leases:
            self._held.difference_update(uids)
            try:
                await step(uids)
            except TRANSIENT as error:
                log.warning("returning %d leases failed; they will lapse: %s", len(uids), error)
                self.metrics.errors.labels("release").inc()

    async def _attempt(self, row: JobRow) -> None:
        uid = row.ref.uid
        ctx = AttemptContext(
            ref=row.ref,
            spec=row.spec,
            attempt=row.attempts,
            idempotency_key=row.spec.nullifier or str(uid),
        )
        began = time.monotonic()
        result: ExecutionResult | None = None
        try:
            async with self._slots:
                self.metrics.inflight.inc()
                began = time.monotonic()
                try:
                    result = await self._execute(ctx)
                finally:
                    self.metrics.inflight.dec()
        except asyncio.CancelledError:
            if not self._cutting_off:
                # Deleted while in flight (the ledger marks it cancelled), or abandoned by `abandon`
                # (its lease lapses): nothing to record here.
                self._held.discard(str(uid))
                return
            # Cut off by `drain`: an attempt like any other, recorded by the settle loop.
        finally:
            self._running.pop(uid, None)
            self._finished()
        seconds = time.monotonic() - began
        if result is not None:
            self._job_seconds += (seconds - self._job_seconds) * 0.1
        self._done.put_nowait(_Done(row, result, seconds))

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
            name = ctx.spec.target.executor
            log.exception("executor %s raised", name, extra=job_fields(ctx.ref))
            # The exception's own words, on one line and short: the status shows them.
            text = " ".join(str(error).split())[:240]
            return ExecutionResult(
                outcome=Outcome.RETRYABLE,
                reason="ExecutorError",
                message=f"executor {name!r} raised {type(error).__name__}" + (f": {text}" if text else ""),
            )

    async def _settle_loop(self) -> None:
        while True:
            pending = [await self._done.get()]
            # Outcomes arriving within a few milliseconds share one ledger statement and one
            # Redis transaction; slots are already free, so this costs latency, not throughput.
            await asyncio.sleep(SETTLE_WINDOW)
            while len(pending) < SETTLE_BATCH and not self._done.empty():
                pending.append(self._done.get_nowait())
            # Leases stay held and renewed while this waits out an outage: no outcome is lost.
            await until_done(
                partial(self._settle, pending), "settle", self.metrics, first_delay=0.1, retry_on=TRANSIENT
            )
            for _ in pending:
                self._done.task_done()
            self._settled.set()

    async def _settle(self, done: list[_Done]) -> None:
        now = datetime.now(UTC)
        items = []
        for d in done:
            if d.result is None:
                decision = cut_off_decision(d.row, self.settings.shutdown_grace_seconds, now)
            else:
                decision = after_attempt(d.row, d.row.attempts, d.result, now)
            items.append(
                Settle(
                    uid=d.row.ref.uid,
                    run=d.row.run,
                    attempt=d.row.attempts,
                    phase=decision.phase,
                    reason=decision.reason,
                    message=decision.message,
                    outcome=d.outcome,
                    next_attempt_at=decision.next_attempt_at,
                    result=decision.result,
                    error=decision.error,
                )
            )
        specs = {d.row.ref.uid: d.row.spec for d in done}
        recorded = {r.ref.uid: r for r in await self.ledger.settle(items, specs)}
        await self._find_own_outcomes(items, recorded)
        finished, retry, dead = [], [], []
        for d in done:
            uid = str(d.row.ref.uid)
            row = recorded.get(d.row.ref.uid)
            self.metrics.attempt_seconds.labels(d.outcome).observe(d.seconds)
            if row is None:
                self.metrics.fenced.inc()
                log.warning(
                    "outcome of attempt %d discarded: the job was re-claimed or deleted",
                    d.row.attempts,
                    extra=job_fields(d.row.ref),
                )
                continue
            if row.phase in (Phase.COMPLETED, Phase.SUSPENDED):
                # A suspended job leaves Redis until it is resumed (admission places it then).
                finished.append(uid)
            elif row.phase is Phase.RETRYING:
                assert row.next_attempt_at is not None
                retry.append((uid, _ms(row.next_attempt_at.timestamp())))
            else:
                dead.append((uid, _ms()))
        # The ledger has committed: from here on nothing may send these outcomes through the ledger
        # again (a second settle is fenced out and would look like a lost race), so the status
        # is told now and only the Redis step is retried until it succeeds.
        self.status.offer(recorded.values())
        for row in recorded.values():
            self._announce(row)
        await until_done(
            partial(self._settle_redis, done, finished, retry, dead),
            "settle-redis",
            self.metrics,
            first_delay=0.1,
            retry_on=TRANSIENT,
        )

    async def _find_own_outcomes(self, items: list[Settle], recorded: dict[UUID, JobRow]) -> None:
        """Add to `recorded` the outcomes an earlier try of this settle committed: when the
        connection dies after COMMIT and before the answer, the retry is fenced out by our own
        outcome, and taking that for a lost race would leave the job leased and its status stale."""
        missing = [i for i in items if i.uid not in recorded]
        if not missing:
            return
        current = await self.ledger.get_many([i.uid for i in missing])
        for item in missing:
            row = current.get(item.uid)
            ours = (item.run, item.attempt, item.phase)
            if row is not None and not row.deleted and (row.run, row.attempts, row.phase) == ours:
                recorded[item.uid] = row

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
        elif row.phase is Phase.SUSPENDED:
            log.info("attempt recorded; job suspended: %s", row.message, extra=fields)
            self.events.post(row.ref, "Normal", "Suspended", row.message or "suspended")
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
                    deadline = _ms() + int(self.settings.lease_seconds * 1000)
                    await self.queue.renew(list(self._held), deadline)
            except TRANSIENT as error:
                log.warning("lease renewal failed: %s", error)
                self.metrics.errors.labels("heartbeat").inc()

    async def drain(self, grace_ends: float, gives_up: float) -> None:
        """Graceful shutdown, while `run` goes on: claim nothing more and hand back the work leased
        ahead, let the attempts in flight finish until `grace_ends` and cut off those still running,
        then wait until every outcome is recorded (at the latest until `gives_up`; both are
        time.monotonic()). Meanwhile the heartbeat renews the leases of the attempts running, and
        the settle loop records each outcome and takes its job out of `leased`.

        An attempt being opened when shutdown begins starts and runs: it is counted in the ledger
        already, and work is opened ahead of the free slots only while attempts take ~0.1 s."""
        self._stopping.set()
        for event in (self._wake, self._room, self._settled):
            event.set()  # wherever the claim loop waits, it wakes up and sees `_stopping`
        await _wait_until(grace_ends, [self._claiming] if self._claiming is not None else [])
        await _wait_until(grace_ends, self._opening)
        stock = list(self._stock)
        self._stock.clear()
        if stock:  # leased ahead, never started: hand them back rather than let the leases run out
            await self._let_go(stock, self.queue.release)
        log.info(
            "shutting down: %d attempts in flight, %d jobs leased ahead handed back",
            len(self._running),
            len(stock),
        )
        late = await _wait_until(grace_ends, self._running.values())
        if late:
            # Left to its lease, an attempt cut off here would wait out the lease before another
            # replica ran it, and would then be recorded as lost with reason LeaseExpired, which
            # it was not. Recorded now (core.lifecycle.cut_off_decision), its job is due again at
            # once and the record says what happened.
            log.warning(
                "%d attempts still running after the %gs shutdown grace: stopping and recording them",
                len(late),
                self.settings.shutdown_grace_seconds,
            )
            self._cutting_off = True
            for task in late:
                task.cancel()
            await _wait_until(gives_up, late)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, gives_up - time.monotonic())):
                await self._done.join()
        if self._held:
            log.error(
                "%d outcomes could not be recorded before exit; their leases lapse within %gs and "
                "the jobs run again",
                len(self._held),
                self.settings.lease_seconds,
            )

    async def abandon(self) -> None:
        """Stop whatever still runs without recording it (closing without a drain, as after a
        failure): the leases lapse and the jobs run again, as after a crash."""
        tasks = [*self._opening, *self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
