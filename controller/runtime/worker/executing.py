"""Running opened attempts: each in a task of its own, under a slot and the job's timeout.

At most `concurrency` attempts run at once (an attempt opened ahead waits for a slot). Every
attempt `start`ed ends in exactly one of these ways, and `capacity.closed()` is called once as it
ends:

- it ran: `ended` gets an `EndedAttempt` with the executor's result. No result goes unnamed: an
  attempt that outlives `spec.timeoutSeconds` is retryable with reason `Timeout`, and an executor
  that raises is retryable with reason `ExecutorError`, naming the exception;
- it was cut off by `cut_off` (the shutdown grace ran out): `ended` gets an `EndedAttempt` with no
  result, recorded as such (see `core.transitions.cut_off`);
- it was cancelled (the job was deleted, or the process gives up without a drain): nothing is
  recorded and its lease is dropped, to lapse.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from uuid import UUID

from controller.adapters.metrics import Metrics
from controller.model.jobs import AttemptContext, ExecutionResult, Executor, JobRow, Outcome
from controller.model.phases import AttemptOutcome
from controller.runtime.logs import job_fields
from controller.runtime.worker.capacity import Capacity
from controller.runtime.worker.leases import Leases

log = logging.getLogger("relayjob.worker")


@dataclass(frozen=True)
class EndedAttempt:
    """An attempt that ended: the row that opened it, what the executor said (None when it was cut
    off at shutdown, its outcome unknown), and how long it held its slot, in seconds."""

    row: JobRow
    result: ExecutionResult | None
    seconds: float

    @property
    def outcome(self) -> AttemptOutcome:
        return AttemptOutcome.LOST if self.result is None else AttemptOutcome(self.result.outcome.value)


async def execute(executor: Executor, name: str, ctx: AttemptContext) -> ExecutionResult:
    """What `executor` (registered as `name`) says of the attempt `ctx`, within its timeout."""
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
        log.exception("executor %s raised", name, extra=job_fields(ctx.ref))
        # The exception's own words, on one line and short: the status shows them.
        text = " ".join(str(error).split())[:240]
        return ExecutionResult(
            outcome=Outcome.RETRYABLE,
            reason="ExecutorError",
            message=f"executor {name!r} raised {type(error).__name__}" + (f": {text}" if text else ""),
        )


class Attempts:
    def __init__(
        self,
        *,
        executors: Mapping[str, Executor],
        concurrency: int,
        capacity: Capacity,
        leases: Leases,
        ended: Callable[[EndedAttempt], None],
        metrics: Metrics,
    ) -> None:
        self._executors = executors
        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = capacity
        self._leases = leases
        self._ended = ended
        self._metrics = metrics
        self._running: dict[UUID, asyncio.Task[None]] = {}
        self._cutting_off = False  # the shutdown grace ran out: attempts cancelled now are recorded
        self._in_slots = 0
        # Read when scraped rather than moved twice per attempt (each move takes the gauge's lock).
        metrics.inflight.set_function(lambda: self._in_slots)

    @property
    def running(self) -> Collection[asyncio.Task[None]]:
        """The tasks of the attempts started and not yet ended (running or waiting for a slot)."""
        return list(self._running.values())

    def start(self, row: JobRow) -> None:
        """Run the attempt `row` opened (its lease is held)."""
        self._running[row.ref.uid] = asyncio.create_task(self._attempt(row))

    def cancel(self, uid: UUID) -> bool:
        """Stop `uid`'s attempt unrecorded; False when none runs here."""
        task = self._running.get(uid)
        if task is None:
            return False
        task.cancel()
        return True

    def cut_off(self, tasks: Collection[asyncio.Task[None]]) -> None:
        """Stop these attempts and have each recorded as cut off."""
        self._cutting_off = True
        for task in tasks:
            task.cancel()

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
                self._in_slots += 1
                began = time.monotonic()
                try:
                    name = ctx.spec.target.executor
                    result = await execute(self._executors[name], name, ctx)
                finally:
                    self._in_slots -= 1
        except asyncio.CancelledError:
            if not self._cutting_off:
                # Deleted while in flight (the ledger marks it cancelled), or abandoned (its lease
                # lapses): nothing to record here.
                self._leases.drop(str(uid))
                return
            # Cut off by the drain: an attempt like any other, recorded by settling.
        finally:
            self._running.pop(uid, None)
            self._capacity.closed()
        seconds = time.monotonic() - began
        if result is not None:
            self._capacity.took(seconds)
        self._ended(EndedAttempt(row, result, seconds))
