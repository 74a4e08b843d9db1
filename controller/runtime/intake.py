"""Admission's group commit: new jobs seen together share one ledger INSERT and one Redis placement.

kopf runs each RelayJob's handler on its own, so a burst of creates arrives as many concurrent
admissions. One at a time, each cost two ledger round trips and a Redis script, and kept the
operator's event loop busy in socket writes while the API server waited for CPU. Here a job that
arrives while a batch is being recorded waits for that batch to finish and goes into the next
one: a lone job is recorded at once, and a burst is recorded in as many statements as it takes
round trips.

Guarantees: at most BATCH_LIMIT jobs share a statement; every `record` call gets its own answer
(its row, or None) or the exception its batch raised, and rows are placed in Redis before any
caller is answered; a cancelled batch cancels every waiting call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol
from uuid import UUID

from controller.adapters.ledger import UNSTORABLE, NewJob
from controller.adapters.queue import Placement
from controller.model.jobs import JobRow
from controller.model.phases import Phase
from controller.runtime.clock import epoch_ms

BATCH_LIMIT = 500


class IntakeLedger(Protocol):
    async def admit_many(self, jobs: Sequence[NewJob]) -> dict[UUID, JobRow]: ...


class IntakeQueue(Protocol):
    async def place(self, items: Sequence[Placement], now_ms: int, only_missing: bool = False) -> int: ...


class Intake:
    def __init__(
        self,
        ledger: IntakeLedger,
        queue: IntakeQueue,
        placement: Callable[[JobRow], Placement],
        placed: Callable[[Iterable[JobRow]], None],
    ) -> None:
        self.ledger = ledger
        self.queue = queue
        self.placement = placement
        self.placed = placed
        self._pending: list[tuple[NewJob, asyncio.Future[JobRow | None]]] = []
        self._recording: asyncio.Task[None] | None = None

    async def record(self, job: NewJob) -> JobRow | None:
        """The row this call created for `job`, ready in Redis if it is Queued; None when the
        batch created nothing for it (already recorded, a held nullifier, an unstorable spec in
        its batch), which `Ledger.admit` then decides on its own. Raises what the batch raised."""
        answer: asyncio.Future[JobRow | None] = asyncio.get_running_loop().create_future()
        self._pending.append((job, answer))
        if self._recording is None:
            self._recording = asyncio.create_task(self._record_pending())
        return await answer

    async def _record_pending(self) -> None:
        batch: list[tuple[NewJob, asyncio.Future[JobRow | None]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[:BATCH_LIMIT], self._pending[BATCH_LIMIT:]
                await self._record_batch(batch)
        except asyncio.CancelledError:
            # The operator is stopping: nobody waits for an answer that will never come.
            for _, answer in batch + self._pending:
                answer.cancel()
            self._pending = []
            raise
        finally:
            self._recording = None

    async def _record_batch(self, batch: list[tuple[NewJob, asyncio.Future[JobRow | None]]]) -> None:
        try:
            created = await self._create([job for job, _ in batch])
        except Exception as error:
            # Each waiting handler retries on its own; a retry finds its row recorded (if the
            # INSERT committed) and places it then.
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
            return
        self.placed(created.values())
        for job, answer in batch:
            if not answer.done():
                answer.set_result(created.get(job.ref.uid))

    async def _create(self, jobs: list[NewJob]) -> dict[UUID, JobRow]:
        """The rows one INSERT created for `jobs`, the Queued ones placed in Redis; none when a
        spec in the batch cannot be stored."""
        try:
            created = await self.ledger.admit_many(jobs)
        except UNSTORABLE:
            return {}
        queued = [r for r in created.values() if r.phase is Phase.QUEUED]
        if queued:
            await self.queue.place([self.placement(r) for r in queued], epoch_ms())
        return created
