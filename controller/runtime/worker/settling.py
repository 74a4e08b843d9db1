"""Settling ended attempts: the ledger record of each outcome, then the Redis ack, in batches.

Guarantees:

- Attempts that end within SETTLE_WINDOW_SECONDS of each other (up to SETTLE_BATCH) share one
  ledger statement and one Redis transaction. Their slots are free already: this costs latency,
  not throughput.
- Each outcome is decided by `core.transitions` (`after_attempt`, or `cut_off` for an attempt cut
  off at shutdown) and recorded fenced by its attempt's fencing token: when the job was re-claimed
  by another worker or deleted meanwhile, nothing is written, the outcome is counted
  (`relayjob_fenced_outcomes_total`) and its lease ends unacked.
- A batch that fails for a server error is retried (loop "settle", capped backoff) until it is
  recorded. Meanwhile its leases stay held and renewed, so no outcome is lost and no job is run
  again. Once the ledger has committed, only the Redis ack is retried (loop "settle-redis"): an
  outcome never goes through the ledger twice.
- After the commit, the status writer is offered the recorded rows and each is announced. The ack
  then takes each job out of `leased`: Completed and Suspended jobs leave Redis, Retrying ones wait
  in `delayed` until their next attempt (epoch ms), DeadLettered ones enter the dead-letter set.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from uuid import UUID

from controller.adapters.ledger import OutcomeRecord
from controller.adapters.metrics import Metrics
from controller.core.transitions import after_attempt, cut_off
from controller.model.jobs import JobRow
from controller.model.phases import Phase
from controller.runtime.clock import epoch_ms
from controller.runtime.logs import job_fields
from controller.runtime.retry import TRANSIENT, until_done
from controller.runtime.worker.announcing import Announcer
from controller.runtime.worker.executing import EndedAttempt
from controller.runtime.worker.leases import Leases
from controller.runtime.worker.ports import StatusSink, WorkLedger, WorkQueue

log = logging.getLogger("relayjob.worker")

SETTLE_BATCH = 256
SETTLE_WINDOW_SECONDS = 0.005
FIRST_RETRY_SECONDS = 0.1


@dataclass
class Acks:
    """Where recorded outcomes send their jobs in Redis: uids, with epoch ms where a set needs it."""

    done: list[str] = field(default_factory=list)
    retry: list[tuple[str, int]] = field(default_factory=list)
    dead: list[tuple[str, int]] = field(default_factory=list)

    def add(self, row: JobRow, now_ms: int) -> None:
        uid = str(row.ref.uid)
        if row.phase in (Phase.COMPLETED, Phase.SUSPENDED):
            # A suspended job leaves Redis until it is resumed (admission places it then).
            self.done.append(uid)
        elif row.phase is Phase.RETRYING:
            assert row.next_attempt_at is not None
            self.retry.append((uid, epoch_ms(row.next_attempt_at.timestamp())))
        else:
            self.dead.append((uid, now_ms))


def outcome_record(ended: EndedAttempt, grace_seconds: float, now: datetime) -> OutcomeRecord:
    """What to record for `ended`, fenced by the token of the attempt it was."""
    row = ended.row
    if ended.result is None:
        decision = cut_off(row, grace_seconds, now)
    else:
        decision = after_attempt(row, row.attempts, ended.result, now)
    return OutcomeRecord(
        uid=row.ref.uid,
        fence=row.fence,
        phase=decision.phase,
        reason=decision.reason,
        message=decision.message,
        outcome=ended.outcome,
        next_attempt_at=decision.next_attempt_at,
        result=decision.result,
        error=decision.error,
    )


class Settling:
    def __init__(
        self,
        *,
        ledger: WorkLedger,
        queue: WorkQueue,
        leases: Leases,
        status: StatusSink,
        announcer: Announcer,
        metrics: Metrics,
        grace_seconds: float,
    ) -> None:
        self._ledger = ledger
        self._queue = queue
        self._leases = leases
        self._status = status
        self._announcer = announcer
        self._metrics = metrics
        self._grace_seconds = grace_seconds
        self._backlog: asyncio.Queue[EndedAttempt] = asyncio.Queue()
        self._recorded = asyncio.Event()  # a batch of outcomes was recorded

    def put(self, ended: EndedAttempt) -> None:
        """Record this attempt's outcome with the next batch."""
        self._backlog.put_nowait(ended)

    def full(self) -> bool:
        """Outcomes are piling up faster than the ledger records them: a batch's worth waits."""
        return self._backlog.qsize() >= SETTLE_BATCH

    async def wait_recorded(self) -> None:
        """Until the next batch is recorded, or `wake` is called."""
        self._recorded.clear()
        await self._recorded.wait()

    def wake(self) -> None:
        self._recorded.set()

    async def join(self) -> None:
        """Until every outcome `put` so far is recorded and acked."""
        await self._backlog.join()

    async def run(self) -> None:
        while True:
            batch = [await self._backlog.get()]
            await asyncio.sleep(SETTLE_WINDOW_SECONDS)
            while len(batch) < SETTLE_BATCH and not self._backlog.empty():
                batch.append(self._backlog.get_nowait())
            await until_done(
                partial(self._settle_batch, batch),
                "settle",
                self._metrics,
                first_delay=FIRST_RETRY_SECONDS,
                retry_on=TRANSIENT,
            )
            for _ in batch:
                self._backlog.task_done()
            self._recorded.set()

    async def _settle_batch(self, batch: list[EndedAttempt]) -> None:
        now = datetime.now(UTC)
        items = [outcome_record(ended, self._grace_seconds, now) for ended in batch]
        specs = {ended.row.ref.uid: ended.row.spec for ended in batch}
        recorded = {r.ref.uid: r for r in await self._ledger.record_outcomes(items, specs)}
        await self._find_own_outcomes(items, recorded)
        acks = Acks()
        now_ms = epoch_ms()
        for ended in batch:
            self._metrics.attempt_seconds.labels(ended.outcome).observe(ended.seconds)
            row = recorded.get(ended.row.ref.uid)
            if row is None:
                self._metrics.fenced.inc()
                log.warning(
                    "outcome of attempt %d discarded: the job was re-claimed or deleted",
                    ended.row.attempts,
                    extra=job_fields(ended.row.ref),
                )
            else:
                acks.add(row, now_ms)
        # The ledger has committed: from here on nothing may send these outcomes through the ledger
        # again (a second record is fenced out and would look like a lost race), so the status is
        # told now and only the Redis ack is retried until it succeeds.
        self._status.offer(recorded.values())
        for row in recorded.values():
            self._announcer.announce(row)
        uids = [str(ended.row.ref.uid) for ended in batch]
        await until_done(
            partial(self._leases.end, uids, partial(self._ack, acks)),
            "settle-redis",
            self._metrics,
            first_delay=FIRST_RETRY_SECONDS,
            retry_on=TRANSIENT,
        )

    async def _ack(self, acks: Acks) -> None:
        await self._queue.ack(done=acks.done, retry=acks.retry, dead=acks.dead)

    async def _find_own_outcomes(self, items: list[OutcomeRecord], recorded: dict[UUID, JobRow]) -> None:
        """Add to `recorded` the outcomes an earlier try of this batch committed: when the
        connection dies after COMMIT and before the answer, the retry is fenced out by our own
        outcome, and taking that for a lost race would leave the job leased and its status stale."""
        missing = [i for i in items if i.uid not in recorded]
        if not missing:
            return
        current = await self._ledger.get_many([i.uid for i in missing])
        for item in missing:
            row = current.get(item.uid)
            # Still our attempt, and no longer running: the outcome recorded for it is ours.
            if (
                row is not None
                and not row.deleted
                and row.fence == item.fence
                and row.phase is not Phase.PROCESSING
            ):
                recorded[item.uid] = row
